"""The `gpulock` command line: argument parsing, output, and turning errors into words.

Every GpulockError becomes one line on stderr (plus its detail lines) and a non-zero exit;
nothing a user can cause ends in a traceback. Heavy modules are imported inside the
command that needs them, so `gpulock --help` and future no-op paths start fast.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gpulock import __version__
from gpulock.errors import GpulockError, StaleLockError

if TYPE_CHECKING:
    from gpulock.manifest import Manifest
    from gpulock.pins import PinnedModel
    from gpulock.store import Store
    from gpulock.store.substituters.pull import Substitutes

FORMATS = ("sh", "dotenv", "dockerfile", "json")

_INIT_TEMPLATE = """\
# gpu.toml: what this project needs on the GPU pod. `gpulock lock` pins it.
[project]
name = "{name}"
python = "{python}"          # the pod's CPython minor version
platform = "linux_x86_64"    # or linux_aarch64
# glibc = "2.28"             # manylinux level of the pod's distribution
# cuda = "12.1"              # CUDA runtime; +cuXYZ wheels must match it

# [groups.pytorch]
# index = "https://download.pytorch.org/whl/cu121"   # only these packages come from here
# packages = ["torch==2.4.1"]

[groups.main]
packages = []

# [models.qwen]
# source = "hf://Qwen/Qwen2.5-0.5B-Instruct"
# revision = "main"
"""


def _manifest_arg(args: argparse.Namespace) -> str | None:
    """--manifest, else --project's gpu.toml, else None (search from here)."""
    if args.manifest:
        return str(args.manifest)
    return str(Path(args.project) / "gpu.toml") if args.project else None


def _find_manifest(given: str | None) -> Path:
    if given:
        return Path(given)
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / "gpu.toml").is_file():
            # Relative, as compilers print it: errors read 'gpu.toml:5:1: ...'.
            return Path(os.path.relpath(folder / "gpu.toml", here))
    raise GpulockError(f"no gpu.toml in {here} or its parents; run 'gpulock init' to write "
                       "one, or pass --manifest")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _Status:
    """A long step's progress: one redrawn line on a terminal, a line every few seconds in
    logs (CI keeps every line it is given)."""

    LOG_EVERY = 5.0

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._said = time.monotonic()
        self._drawn = False

    def __call__(self, line: str) -> None:
        if self.tty:
            sys.stderr.write(f"\r\033[K{line}")
            sys.stderr.flush()
            self._drawn = True
        elif time.monotonic() - self._said >= self.LOG_EVERY:
            self._said = time.monotonic()
            _say(line)

    def __enter__(self) -> _Status:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._drawn:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.manifest or "gpu.toml")
    if path.exists() and not args.force:
        raise GpulockError(f"{path} already exists; pass --force to overwrite it")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    name = Path.cwd().name or "project"
    path.write_text(_INIT_TEMPLATE.format(name=name, python=python), encoding="utf-8")
    print(f"Wrote {path}; add packages, then run 'gpulock lock'", file=sys.stderr)
    return 0


def _cmd_lock(args: argparse.Namespace) -> int:
    from gpulock import manifest
    from gpulock.lock import lockfile

    whole = manifest.load(_find_manifest(_manifest_arg(args)))
    first = Path(args.lock) if args.lock else lockfile.default_path(whole)
    names = [manifest.DEFAULT_TARGET, *(t.name for t in whole.targets)]
    if len(names) > 1 and args.lock:
        raise GpulockError("gpu.toml declares [targets]: each is locked beside the default "
                           f"lock ({lockfile.target_path(first, names[1]).name}...), so --lock "
                           "names none of them; leave it out")
    upgrading = _upgrading(args.upgrade_package, whole, first, names)
    models = None
    for name in names:
        models = _lock_one(args, whole.for_target(name), lockfile.target_path(first, name),
                           f" [target {name}]" if len(names) > 1 else "", upgrading[name],
                           models)
    return 0


def _upgrading(requested: list[str], whole: Manifest, first: Path, names: list[str]
               ) -> dict[str, list[str]]:
    """--upgrade-package for each target: the names that target's lock or gpu.toml holds
    (a CUDA 12 runtime is in one target's lock only); a name no target holds is an error
    before anything is locked."""
    from packaging.utils import canonicalize_name

    from gpulock.lock import lockfile
    from gpulock.lock.locking import known_names, read_previous

    if len(names) == 1:
        return {names[0]: requested}
    held = {name: known_names(whole, read_previous(lockfile.target_path(first, name)))
            for name in names}
    unknown = [n for n in requested if all(canonicalize_name(n) not in h for h in held.values())]
    if unknown:
        raise GpulockError(f"--upgrade-package {unknown[0]}: no package or model of that name "
                           "is in gpu.toml or any target's lock")
    return {name: [n for n in requested if canonicalize_name(n) in held[name]]
            for name in names}


def _lock_one(args: argparse.Namespace, spec: Manifest, path: Path, which: str,
              upgrading: list[str], models: list[PinnedModel] | None) -> list[PinnedModel]:
    """Lock one target of the manifest into `path` (`which`: its name, said after it), its
    models pinned as `models` says when another target pinned them; return its model pins."""
    from gpulock.lock import lockfile
    from gpulock.lock import locking as lock

    if args.check:
        locked = lockfile.check(spec, path)
        print(f"{path} is up to date ({len(locked.packages)} packages){which}",
              file=sys.stderr)
        return list(locked.models)
    started = time.perf_counter()
    with _Status() as status:
        from gpulock.locations import default_store
        from gpulock.store import Store

        store = Store(Path(args.store) if args.store else default_store(spec.path.parent))
        result = lock.lock(spec, path, upgrade=args.upgrade, upgrade_packages=upgrading,
                           progress=status, store=store, refresh=args.refresh, models=models)
    elapsed = time.perf_counter() - started
    count = len(result.lock.packages)
    pins = list(result.lock.models)
    if result.up_to_date:
        print(f"{path} is up to date ({count} packages, manifest unchanged) "
              f"[{elapsed:.2f}s]{which}", file=sys.stderr)
        return pins
    print(f"Resolved {count} packages for {result.lock.target.describe()} in {elapsed:.2f}s"
          f"{which}", file=sys.stderr)
    for model in result.lock.models:
        at = f"@{model.commit[:12]}" if model.commit else ""
        weights = dict(model.weights)
        detail = (f"; {weights['parameters']:,} parameters ({', '.join(weights['dtypes'])}), "
                  f"{weights['bytes'] / 2**30:.2f} GiB of GPU memory for the weights"
                  if weights else "")
        print(f"model {model.name}: {model.source}{at}, {len(model.files)} files, "
              f"{model.size / 2**20:.1f} MiB{detail}", file=sys.stderr)
    for line in result.changes:
        print(line, file=sys.stderr)
    print(f"Wrote {path}" if result.written else f"{path} unchanged", file=sys.stderr)
    return pins


def _project_paths(args: argparse.Namespace) -> tuple[Manifest, Path, Store]:
    from gpulock import manifest
    from gpulock.locations import default_store
    from gpulock.lock import lockfile
    from gpulock.store import Store

    spec = manifest.load(_find_manifest(_manifest_arg(args)))
    if spec.targets and args.lock and not getattr(args, "target", None):
        raise GpulockError(f"gpu.toml declares [targets]: say which one {args.lock} is "
                           "locked for with --target NAME")
    target = _target(spec, args)
    path = Path(args.lock) if args.lock else lockfile.target_path(
        lockfile.default_path(spec), target)
    root = Path(args.store) if args.store else default_store(spec.path.parent)
    return spec.for_target(target), path, Store(root)


def _target(spec: Manifest, args: argparse.Namespace) -> str:
    """--target, else the one this pod runs when gpu.toml declares [targets] (said on
    stderr by sync and doctor), else [project]'s own."""
    from gpulock.manifest import DEFAULT_TARGET

    given = getattr(args, "target", None)
    if given:
        spec.for_target(given)  # an unknown name: one sentence, with the closest
        return str(given)
    if not spec.targets or args.func not in (_cmd_sync, _cmd_doctor, _cmd_run):
        return DEFAULT_TARGET  # status, env, push...: [project]'s unless --target says
    from gpulock.sync.doctor import probe_driver
    from gpulock.sync.targets import choose

    name, why = choose(spec, probe_driver())
    if args.func in (_cmd_sync, _cmd_doctor):
        _say(why)
    return name


def _cmd_sync(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    # A named target is checked against gpu.toml's [targets] by the full path (the fast one
    # decides only for a gpu.toml without targets, whose one target is `default`).
    if not (args.install_python or args.models_only or args.target not in (None, "default")):
        from gpulock.uptodate import nothing_to_do

        found = _find_manifest(_manifest_arg(args))
        said = nothing_to_do(found, Path(args.lock) if args.lock else
                             found.parent / "pylock.gpu.toml",
                             Path(args.store) if args.store else None,
                             models=not args.no_models)
        if said is not None:
            print(f"{said} [{time.perf_counter() - started:.2f}s]", file=sys.stderr)
            return 0
    from gpulock.lock import lockfile
    from gpulock.sync import Options, sync

    spec, path, store = _project_paths(args)
    if args.frozen:
        locked = lockfile.check(spec, path)
    else:
        try:
            locked = lockfile.check(spec, path)
        except StaleLockError:  # a damaged or unsafe lock is refused, never replaced silently
            from gpulock.lock import locking as lock

            with _Status() as status:
                result = lock.lock(spec, path, progress=status, store=store)
            print(f"Locked {len(result.lock.packages)} packages into {path}", file=sys.stderr)
            locked = lockfile.read(path)
    options = Options(jobs=args.jobs, packages=not args.models_only, models=not args.no_models,
                      install_python=args.install_python or spec.project.install_python,
                      check=not args.no_check, substitutes=_substitutes(spec))
    outcome = sync(spec, locked, path.read_text(encoding="utf-8"), store.open(), options)
    gen = outcome.generation
    models = (f", {_models_where(store, spec.project.name, locked.models)}"
              if locked.models and not args.no_models else "")
    if outcome.nothing_to_do:
        where = f"generation {gen.number}, {len(gen.packages)} packages" if gen else "models"
        print(f"'{spec.project.name}' is up to date: {where}{models} [{outcome.seconds:.2f}s]",
              file=sys.stderr)
        return 0
    fetched = (f"; fetched {outcome.model_files} model files "
               f"({outcome.model_bytes / 2**20:.1f} MiB)" if outcome.model_files else "")
    packages = (f"Added {len(outcome.added)}, reused {outcome.reused}; generation "
                f"{gen.number} of '{spec.project.name}' is current" if gen
                else f"'{spec.project.name}' models synced")
    print(f"{packages}{fetched}{models} [{outcome.seconds:.2f}s]", file=sys.stderr)
    return 0


def _models_where(store: Store, project: str, models: Sequence[PinnedModel]) -> str:
    """"3 model(s) in <store>/v1/hf (2) and <store>/v1/files/<project> (1)": each cache
    the lock's models are laid out in."""
    from collections import Counter

    from gpulock.sources import kind_of

    caches = Counter(kind_of(m.source).cache(store, project) for m in models)
    where = [f"{cache} ({count})" if len(caches) > 1 else str(cache)
             for cache, count in caches.items()]
    return f"{len(models)} model(s) in {' and '.join(where)}"


def _substituters(spec: Manifest) -> list[str]:
    """$GPULOCK_SUBSTITUTERS (space-separated) when set, else gpu.toml's [cache] list."""
    given = os.environ.get("GPULOCK_SUBSTITUTERS")
    return given.split() if given is not None else list(spec.cache.substituters)


def _substitutes(spec: Manifest) -> Substitutes | None:
    from gpulock.signing import parse_public
    from gpulock.store.substituters import open_substituter
    from gpulock.store.substituters.pull import Substitutes

    urls = _substituters(spec)
    if not urls:
        return None
    trusted = [parse_public(k, f"{spec.path} [cache] trusted-keys")
               for k in spec.cache.trusted_keys]
    return Substitutes([open_substituter(u) for u in urls], trusted, _say)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from gpulock.signing import keygen

    secret, public = keygen(args.name, Path(args.out))
    print(f"Wrote {secret} (keep it secret: push signs with it) and {public}; put this line "
          f"in [cache] trusted-keys of the pods' gpu.toml:\n{public.read_text().strip()}",
          file=sys.stderr)
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from gpulock.env.generation import current
    from gpulock.signing import load_secret
    from gpulock.store.substituters import open_substituter
    from gpulock.store.substituters.push import Pushed, push, push_blobs, refusal

    spec, lock_path, store = _project_paths(args)
    opened = _opened(store)
    urls = [args.to] if args.to else _substituters(spec)
    if not urls:
        raise GpulockError("push needs a cache: --to URL, [cache] substituters in gpu.toml "
                           "or $GPULOCK_SUBSTITUTERS")
    key = load_secret(args.key)
    if args.all:
        from gpulock.store import listing

        keys = [key for key in listing.entries(opened) if opened.has(key)]
    else:
        now = current(opened, spec.project.name)
        if now is None:
            raise GpulockError(f"'{spec.project.name}' has no synced environment in "
                               f"{store.root} to push; run 'gpulock sync' (or push --all)")
        keys = sorted(now.packages.values())
    cache = open_substituter(urls[0])
    print(f"Pushing {len(keys)} entries to {cache.url}", file=sys.stderr)
    result = push(opened, cache, key, keys, _say, jobs=args.jobs)
    print(f"Pushed {result.entries} entries ({result.bytes / 2**20:.1f} MiB); "
          f"{result.present} were there already", file=sys.stderr)
    blobs = _model_blobs(opened, lock_path, args.all)
    sent = push_blobs(opened, cache, blobs, _say, jobs=args.jobs) if blobs else Pushed()
    if blobs:
        print(f"Pushed {sent.entries} model files ({sent.bytes / 2**20:.1f} MiB); "
              f"{sent.present} were there already", file=sys.stderr)
    damaged = refusal(result, sent)
    if damaged:
        raise damaged
    return 0


def _model_blobs(store: Store, lock_path: Path, every: bool) -> list[str]:
    """The sha256 of each model file to push: the lock's models', or every blob's."""
    from gpulock.lock import lockfile
    from gpulock.store import listing

    if every:
        return sorted({sha for blob in listing.blobs(store)
                       if (sha := listing.blob_sha256(blob)) is not None})
    if not lock_path.is_file():
        return []
    models = list(lockfile.read(lock_path).models)
    return sorted({f.sha256 for m in models for f in m.files if f.sha256})


def _cmd_env(args: argparse.Namespace) -> int:
    from gpulock.env.exports import exports, render
    from gpulock.env.generation import current
    from gpulock.store import Store

    spec, _, store = _project_paths(args)
    if current(store, spec.project.name) is None:
        print(f"warning: '{spec.project.name}' has no synced environment in {store.root} yet; "
              "run 'gpulock sync'", file=sys.stderr)
    seen = store
    if args.mounted_at:
        if not os.path.isabs(args.mounted_at):
            raise GpulockError(f"--mounted-at {args.mounted_at!r} is not an absolute path: give "
                               "the store's path as the worker sees it, e.g. "
                               "/runpod-volume/.gpulock")
        seen = Store(Path(args.mounted_at))
    print(render(exports(seen, spec.project.name, spec.project.python,
                         [m.source for m in spec.models]), args.format))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from gpulock.env.generation import current, project_dir, site_packages
    from gpulock.places import CURRENT

    spec, _, store = _project_paths(args)
    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    if not command:
        raise GpulockError("nothing to run: use 'gpulock run -- COMMAND [ARGS]'")
    now = current(store, spec.project.name)
    if now is None:
        raise GpulockError(f"'{spec.project.name}' has no synced environment in {store.root}; "
                           "run 'gpulock sync' first")
    env_root = project_dir(store, spec.project.name).absolute() / CURRENT
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    environ["VIRTUAL_ENV"] = str(env_root)
    environ["PATH"] = f"{env_root / 'bin'}{os.pathsep}{environ.get('PATH', '')}"
    if not os.path.isfile(now.interpreter):
        # The pod's interpreter, not in this image: `python` is then PATH's pythonX.Y (a
        # dangling link is passed over), which finds the environment this way.
        environ["PYTHONPATH"] = str(site_packages(env_root, now.python_minor))
    try:
        os.execvpe(command[0], command, environ)
    except OSError as exc:
        raise GpulockError(f"cannot run {command[0]!r}: {exc.strerror}") from None
    return 1  # execvpe does not return


def _cmd_status(args: argparse.Namespace) -> int:
    from gpulock.env.generation import all_generations, current

    spec, lock_path, store = _project_paths(args)
    now = current(store, spec.project.name)
    generations = all_generations(store, spec.project.name)
    print(f"store: {store.root}")
    pkgs = store.layout.pkgs
    print(f"packages in the store: {len(os.listdir(pkgs)) if pkgs.is_dir() else 0}")
    if not generations:
        print(f"'{spec.project.name}' has no generations; run 'gpulock sync'")
    for gen in generations:
        mark = "*" if now and gen.number == now.number else " "
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(gen.created))
        print(f"{mark} gen-{gen.number}  {stamp}  {len(gen.packages)} packages  "
              f"Python {gen.python_version}")
    if now and generations and generations[-1].number > now.number:
        print(f"rolled back: generation {now.number} is current, {generations[-1].number} is "
              "newer; the next 'gpulock sync' builds the lock again")
    _print_models(store, spec.project.name, lock_path)
    return 0


def _print_models(store: Store, project: str, lock_path: Path) -> None:
    from gpulock.lock import lockfile
    from gpulock.models.blobs import stored_blob
    from gpulock.sources import kind_of

    try:
        models = list(lockfile.read(lock_path).models)
    except GpulockError:
        return
    for model in models:
        have = sum(1 for f in model.files if stored_blob(store, f) is not None)
        state = "complete" if have == len(model.files) else f"{have}/{len(model.files)} files"
        print(f"model {model.name}: {model.source}@{(model.commit or '')[:12]}  "
              f"{model.size / 2**20:.1f} MiB  {state}  "
              f"{kind_of(model.source).view(store, project, model)}")


def _cmd_diff(args: argparse.Namespace) -> int:
    from gpulock.lock import lockfile
    from gpulock.lock.diff import diff

    old, new = lockfile.read(Path(args.old)), lockfile.read(Path(args.new))
    lines = diff(old, new)
    for line in lines:
        print(line)
    if not lines:
        print("no package changes", file=sys.stderr)
    return 0


def _store_only(args: argparse.Namespace) -> Store:
    """The store for store-wide commands: --store, else the project's, else the default."""
    from gpulock import manifest
    from gpulock.locations import default_store
    from gpulock.store import Store

    if args.store:
        return Store(Path(args.store))
    try:
        spec = manifest.load(_find_manifest(_manifest_arg(args)))
    except GpulockError:
        return Store(default_store(Path.cwd()))
    return Store(default_store(spec.path.parent))  # every target's store: no target to choose


def _opened(store: Store) -> Store:
    """An existing store, checked (newer layout, planted links) but not changed."""
    store.check_layout()
    store.layout.check()
    if not store.base.is_dir():
        raise GpulockError(f"there is no gpulock store at {store.root}; pass --store or set "
                           "GPULOCK_STORE")
    return store


def _cmd_gc(args: argparse.Namespace) -> int:
    from gpulock.upkeep.gc import collect, describe

    if args.keep < 1:
        raise GpulockError("--keep must be at least 1: the current generation is always kept")
    store = _opened(_store_only(args))
    result = collect(store, keep=args.keep, dry_run=args.dry_run,
                     log=lambda line: print(line, file=sys.stderr) if args.verbose else None)
    print(f"{store.root}: {describe(result, args.dry_run)}", file=sys.stderr)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from gpulock.upkeep.repair import repair
    from gpulock.upkeep.verify import check

    store = _opened(_store_only(args))
    started = time.perf_counter()
    result = check(store, fast=args.fast, jobs=args.jobs)
    elapsed = time.perf_counter() - started
    for damage in result.damage:
        print(f"damaged {damage.kind} {damage.key}: {damage.problem}", file=sys.stderr)
    for line in result.fallbacks:
        print(f"note: {line}", file=sys.stderr)
    # What this machine lacks is said, but is no damage: verify's status is the store's.
    for line in result.cannot_start:
        print(f"warning: cannot start {line}", file=sys.stderr)
    mode = "xxh3" if args.fast else "sha256"
    print(f"checked {result.entries} package entries ({result.files} files), {result.blobs} "
          f"model files and {result.generations} generations, {result.bytes / 2**20:.1f} MiB "
          f"by {mode} in {elapsed:.2f}s: {len(result.damage)} problem(s)", file=sys.stderr)
    if not result.damage:
        return 0
    if not args.repair:
        print("run 'gpulock verify --repair' to fetch the damaged files again", file=sys.stderr)
        return 1
    again = result
    for _round in range(3):  # removing a planted link shows what it hid: repair that too
        repaired = repair(store, again.damage, lambda line: print(line, file=sys.stderr))
        again = check(store, fast=args.fast, jobs=args.jobs)
        if not again.damage or not repaired:
            break
    for damage in again.damage:
        print(f"still damaged {damage.kind} {damage.key}: {damage.problem}", file=sys.stderr)
    if again.damage:
        return 1
    print("repaired; the store verifies", file=sys.stderr)
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    import json

    from gpulock.lock import lockfile
    from gpulock.sync import doctor

    spec, lock_path, store = _project_paths(args)
    if not lock_path.is_file():
        raise GpulockError(f"{lock_path} does not exist; run 'gpulock lock' first")
    found = doctor.checks(spec, lockfile.read(lock_path), store, doctor.probe_driver())
    if args.format == "json":
        print(json.dumps(doctor.as_json(found), indent=2))
    else:
        for check in found:
            print(f"{check.status:<8} {check.message}")
    blockers = sum(c.status == doctor.BLOCKER for c in found)
    if blockers and args.format != "json":
        print(f"{blockers} blocker(s): sync would build an environment this pod cannot run",
              file=sys.stderr)
    return 1 if blockers else 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from gpulock.env.generation import rollback

    spec, _, store = _project_paths(args)
    target, was = rollback(_opened(store), spec.project.name, args.generation)
    before = f" (was generation {was})" if was is not None else ""
    print(f"generation {target.number} of '{spec.project.name}' is current{before}; the next "
          "'gpulock sync' builds the lock again (revert or pin gpu.toml and the lock to stay "
          "here)", file=sys.stderr)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from gpulock.importer import import_file
    from gpulock.store.scratch import write_atomic

    out = Path(args.manifest or "gpu.toml")
    if out.exists() and not args.force:
        raise GpulockError(f"{out} already exists; pass --force to overwrite it")
    imported = import_file(Path(args.source), python=args.python,
                           models=Path(args.models) if args.models else None)
    text = imported.text()
    write_atomic(out, text)
    manifest = imported.manifest()
    packages = sum(len(g.packages) for g in manifest.groups)
    print(f"Wrote {out}: {len(manifest.groups)} group(s), {packages} package(s), "
          f"{len(manifest.models)} model(s) for CPython {manifest.project.python}",
          file=sys.stderr)
    for line in imported.dropped:
        print(f"  not carried over: {line}", file=sys.stderr)
    print("Next: 'gpulock lock', then 'gpulock sync' on the pod", file=sys.stderr)
    return 0


def _cmd_k8s_job(args: argparse.Namespace) -> int:
    from gpulock import k8s, manifest
    from gpulock.lock import lockfile

    if not args.create_pvc and (args.pvc_size or args.storage_class):
        flag = "--pvc-size" if args.pvc_size else "--storage-class"
        raise GpulockError(f"{flag} describes a claim to create: add --create-pvc, or leave "
                           f"it out to use the existing claim '{args.pvc}'")
    whole = manifest.load(_find_manifest(_manifest_arg(args)))
    target = args.target or manifest.DEFAULT_TARGET
    spec = whole.for_target(target)
    path = Path(args.lock) if args.lock else lockfile.target_path(
        lockfile.default_path(whole), target)
    options = k8s.JobOptions(target=target if whole.targets else None,
        name=args.name, namespace=args.namespace, pvc=args.pvc, create_pvc=args.create_pvc,
        pvc_size=args.pvc_size or k8s.DEFAULT_PVC_SIZE, storage_class=args.storage_class,
        image=args.image, install_gpulock=None if args.no_install_gpulock
        else args.install_gpulock, install_python=not args.no_install_python,
        secret=args.secret)
    rendered = k8s.job_manifests(spec, path, options)
    for note in rendered.notes:
        _say(f"note: {note}")
    text = rendered.yaml()
    kinds = ", ".join(f"{doc['kind']} {doc['metadata']['name']}" for doc in rendered.documents)
    if args.out:
        from gpulock.store.scratch import write_atomic

        write_atomic(Path(args.out), text)
        _say(f"Wrote {args.out}: {kinds}; apply it with 'kubectl apply --server-side -f "
             f"{args.out}'")
    else:
        sys.stdout.write(text)
        _say(f"{kinds}: syncs '{spec.project.name}' into claim '{args.pvc}' at "
             f"{k8s.STORE}")
    return 0


def _cmd_k8s(parser: argparse.ArgumentParser) -> object:
    def show(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpulock",
        description="Reproducible GPU environments and models on a pod's persistent volume.")
    parser.add_argument("--version", action="version", version=f"gpulock {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    init = sub.add_parser("init", help="write a commented gpu.toml")
    init.add_argument("--manifest", help="where to write it (default: ./gpu.toml)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=_cmd_init)

    lock = sub.add_parser("lock", help="resolve gpu.toml into pylock.gpu.toml for the pod")
    lock.add_argument("--manifest", help="the manifest (default: gpu.toml here or above)")
    lock.add_argument("--project", help="the folder of the project's gpu.toml")
    lock.add_argument("--lock", help="the lock file (default: pylock.gpu.toml beside it)")
    lock.add_argument("--upgrade", action="store_true", help="ignore existing pins")
    lock.add_argument("--refresh", action="store_true",
                      help="revalidate every cached index page, even those still fresh")
    lock.add_argument("--upgrade-package", action="append", default=[], metavar="NAME",
                      help="free one package's pin (repeatable)")
    lock.add_argument("--store", help="where ref:// models find the projects they name "
                      "(default: as for sync)")
    lock.add_argument("--check", action="store_true",
                      help="exit non-zero unless the lock matches the manifest; write nothing")
    lock.set_defaults(func=_cmd_lock)

    def project_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--manifest", help="the manifest (default: gpu.toml here or above)")
        command.add_argument("--project", help="the folder of the project's gpu.toml")
        command.add_argument("--lock", help="the lock file (default: pylock.gpu.toml beside it)")
        command.add_argument("--store", help="the store (default: $GPULOCK_STORE, else "
                             "/workspace/.gpulock when writable, else ./store)")
        command.add_argument("--target", help="which of gpu.toml's [targets] (default: the "
                             "one this pod's architecture and driver run)")

    sync = sub.add_parser("sync", help="fill the store and switch the environment to the lock")
    project_options(sync)
    sync.add_argument("--frozen", action="store_true",
                      help="refuse a lock that does not match the manifest (never re-lock)")
    sync.add_argument("--jobs", type=int, default=8, help="parallel downloads (default 8)")
    sync.add_argument("--install-python", action="store_true",
                      help="when the store has no CPython of the lock's target, install it "
                      "there with uv (as [project] install-python = true does)")
    which = sync.add_mutually_exclusive_group()
    sync.add_argument("--no-check", action="store_true",
                      help="skip doctor's blocking checks (driver, glibc, disk, GPU archs)")
    which.add_argument("--no-models", action="store_true", help="sync packages only")
    which.add_argument("--models-only", action="store_true", help="sync models only")
    sync.set_defaults(func=_cmd_sync)

    keygen = sub.add_parser("keygen", help="make a signing key pair for a binary cache")
    keygen.add_argument("name", help="the key's name, e.g. team-cache-1")
    keygen.add_argument("--out", required=True, metavar="DIR",
                        help="where to write NAME.secret and NAME.public")
    keygen.set_defaults(func=_cmd_keygen)

    pushed = sub.add_parser("push", help="upload the environment's store entries a binary "
                            "cache lacks, signed")
    project_options(pushed)
    pushed.add_argument("--all", action="store_true", help="every entry in the store")
    pushed.add_argument("--to", metavar="URL", help="the cache (default: the first of "
                        "[cache] substituters or $GPULOCK_SUBSTITUTERS)")
    pushed.add_argument("--key", metavar="FILE", help="the secret key (default: "
                        "$GPULOCK_SIGNING_KEY, the key or its file)")
    pushed.add_argument("--jobs", type=int, default=4, help="parallel uploads (default 4)")
    pushed.set_defaults(func=_cmd_push)

    env = sub.add_parser("env", help="print PYTHONPATH and PATH exports for the environment")
    project_options(env)
    env.add_argument("--format", choices=FORMATS, default="sh")
    env.add_argument("--mounted-at", metavar="PATH",
                     help="the store's path where the exports are used, when it is not this "
                          "machine's (a RunPod serverless worker sees a pod's "
                          "/workspace/.gpulock at /runpod-volume/.gpulock)")
    env.set_defaults(func=_cmd_env)

    run = sub.add_parser("run", help="run a command inside the synced environment")
    project_options(run)
    run.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    run.set_defaults(func=_cmd_run)

    doctor = sub.add_parser("doctor", help="check this pod (driver, GPUs, glibc, Python, "
                            "disk, model memory) against the lock")
    project_options(doctor)
    doctor.add_argument("--format", choices=("text", "json"), default="text")
    doctor.set_defaults(func=_cmd_doctor)

    status = sub.add_parser("status", help="show generations and what the store holds")
    project_options(status)
    status.set_defaults(func=_cmd_status)

    diff = sub.add_parser("diff", help="what changes between two locks, in words")
    diff.add_argument("old")
    diff.add_argument("new")
    diff.set_defaults(func=_cmd_diff)

    gc = sub.add_parser("gc", help="remove what no kept generation, root or sync references")
    project_options(gc)
    gc.add_argument("--keep", type=int, default=3, metavar="N",
                    help="keep the newest N generations of each project (default 3); "
                    "the current one is always kept")
    gc.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    gc.add_argument("-v", "--verbose", action="store_true", help="name everything removed")
    gc.set_defaults(func=_cmd_gc)

    verify = sub.add_parser("verify", help="re-check the store against its recorded hashes")
    project_options(verify)
    verify.add_argument("--fast", action="store_true",
                        help="compare xxh3 recorded at publish time instead of sha256")
    verify.add_argument("--repair", action="store_true", help="fetch damaged files again")
    verify.add_argument("--jobs", type=int, default=os.cpu_count() or 4,
                        help="files hashed in parallel")
    verify.set_defaults(func=_cmd_verify)

    rollback = sub.add_parser("rollback", help="make an earlier generation current again")
    project_options(rollback)
    rollback.add_argument("generation", type=int, nargs="?", metavar="GEN",
                          help="its number (default: the one before current)")
    rollback.set_defaults(func=_cmd_rollback)

    imported = sub.add_parser("import", help="write gpu.toml from dependencies.yaml, "
                              "requirements.txt or pyproject.toml")
    imported.add_argument("source", help="the file to import")
    imported.add_argument("--models", help="a models dict {modelscope: [...], huggingface: "
                          "[...]} in YAML/JSON, or a config.py whose `models` returns one")
    imported.add_argument("--python", help="the pod's CPython (default: the file's, else this "
                          "one's)")
    imported.add_argument("--manifest", help="where to write it (default: ./gpu.toml)")
    imported.add_argument("--force", action="store_true", help="overwrite an existing file")
    imported.set_defaults(func=_cmd_import)

    kube = sub.add_parser("k8s", help="Kubernetes manifests that sync the project on a "
                          "cluster's shared volume")
    kube.set_defaults(func=_cmd_k8s(kube))
    kinds = kube.add_subparsers(dest="k8s_command", metavar="KIND")
    job = kinds.add_parser(
        "job", help="a Job (and its ConfigMap) running 'gpulock sync --frozen' into a "
        "ReadWriteMany claim at /workspace; YAML on stdout",
        description="Write a ConfigMap holding gpu.toml and the lock, and a Job that runs "
        "'gpulock sync --frozen' on them into the store /workspace/.gpulock of a "
        "ReadWriteMany PersistentVolumeClaim, as YAML for 'kubectl apply --server-side -f -'.")
    job.add_argument("--manifest", help="the manifest (default: gpu.toml here or above)")
    job.add_argument("--project", help="the folder of the project's gpu.toml")
    job.add_argument("--lock", help="the lock file (default: pylock.gpu.toml beside it); it "
                     "must be fresh")
    job.add_argument("--target", help="which of gpu.toml's [targets] the Job syncs (its pod "
                     "has no GPU to choose by; default: [project]'s own)")
    job.add_argument("--name", help="the Job's and ConfigMap's name (default: "
                     "gpulock-sync-<project>)")
    job.add_argument("--namespace", help="their namespace (default: kubectl's current one)")
    job.add_argument("--pvc", default="gpulock-store", metavar="NAME",
                     help="the ReadWriteMany claim holding the store (default: gpulock-store)")
    job.add_argument("--create-pvc", action="store_true",
                     help="also write that PersistentVolumeClaim")
    job.add_argument("--pvc-size", metavar="SIZE",
                     help="with --create-pvc: its size (default: 500Gi)")
    job.add_argument("--storage-class", metavar="CLASS",
                     help="with --create-pvc: its storage class (default: the cluster's)")
    job.add_argument("--image", default="python:3.12-slim",
                     help="the containers' image (default: python:3.12-slim)")
    installed = job.add_mutually_exclusive_group()
    installed.add_argument("--install-gpulock", default=f"gpulock=={__version__}",
                           metavar="SPEC", help="what an init container pip-installs into a "
                           f"venv for the Job (default: gpulock=={__version__})")
    installed.add_argument("--no-install-gpulock", action="store_true",
                           help="the image has gpulock on PATH: no init container")
    job.add_argument("--no-install-python", action="store_true",
                     help="build on the image's CPython instead of installing the lock's "
                     "into the store (only when the pods using the volume run that image)")
    job.add_argument("--secret", default="gpulock-credentials", metavar="NAME",
                     help="an optional Secret whose keys become the Job's environment "
                     "(AWS_*, HF_TOKEN, ...) and whose 'netrc' key is its netrc file "
                     "(default: gpulock-credentials)")
    job.add_argument("--out", metavar="FILE", help="write the YAML here, not to stdout")
    job.set_defaults(func=_cmd_k8s_job)
    return parser


def _stop_git_and_end(signum: int, _frame: object) -> None:
    """SIGTERM or SIGHUP (a pod stopped, `timeout`, a closed terminal) reaches gpulock but not
    the git commands it runs in process groups of their own: stop them, then end as the
    signal ends a process."""
    if "gpulock.lock.vcs" in sys.modules:
        sys.modules["gpulock.lock.vcs"].stop_running()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def main(argv: Sequence[str] | None = None) -> int:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_DFL:  # a host's own handler is kept
            try:
                signal.signal(signum, _stop_git_and_end)
            except ValueError:  # main() called on another thread: signals are not its
                break
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except GpulockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if "gpulock.lock.vcs" in sys.modules:  # git on the pool's threads: stop it too
            sys.modules["gpulock.lock.vcs"].stop_running()
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gpulock env | head -1`: the reader left; say nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        # A full disk, a read-only volume, a permission: the machine's, not a bug's.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; nothing was switched, the store and the "
              "current environment are as they were", file=sys.stderr)
        return 1
