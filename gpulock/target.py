"""The pod a lock is made for: marker environment, wheel tag priority, CUDA label.

gpulock resolves for the target, never for the host: a lock made on a Mac laptop with
Python 3.12 for a linux x86_64 pod running CPython 3.10 evaluates every marker and picks
every wheel as that pod would.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

# The oldest manylinux level each architecture ever had (PEP 600 and its predecessors).
_MANYLINUX_FLOOR = {"x86_64": 5, "aarch64": 17}
_LEGACY_ALIASES = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


@dataclass(frozen=True)
class Target:
    python: str  # "3.10" or "3.10.12"
    platform: str = "linux_x86_64"
    glibc: str = "2.28"
    cuda: str | None = None

    @property
    def arch(self) -> str:
        return self.platform.split("_", 1)[1]

    @property
    def python_minor(self) -> tuple[int, int]:
        major, minor = self.python.split(".")[:2]
        return int(major), int(minor)

    @property
    def python_full_version(self) -> str:
        # Without a patch level the lowest one is assumed, as uv does for --python-version.
        return self.python if self.python.count(".") == 2 else f"{self.python}.0"

    @property
    def requires_python(self) -> str:
        return f"=={self.python}" if self.python.count(".") == 2 else f"=={self.python}.*"

    @property
    def python_tag(self) -> str:
        return "cp{}{}".format(*self.python_minor)

    @property
    def cuda_label(self) -> str | None:
        """The local version label of wheels built for this CUDA, e.g. 12.1 -> cu121."""
        return "cu" + self.cuda.replace(".", "") if self.cuda else None

    def describe(self) -> str:
        cuda = f", CUDA {self.cuda}" if self.cuda else ""
        level = self.glibc.replace(".", "_")
        return f"CPython {self.python} on manylinux_{level}_{self.arch}{cuda}"

    @cached_property
    def marker_environment(self) -> dict[str, str]:
        major, minor = self.python_minor
        return {
            "implementation_name": "cpython",
            "implementation_version": self.python_full_version,
            "os_name": "posix",
            "platform_machine": self.arch,
            "platform_python_implementation": "CPython",
            "platform_release": "",
            "platform_system": "Linux",
            "platform_version": "",
            "python_full_version": self.python_full_version,
            "python_version": f"{major}.{minor}",
            "sys_platform": "linux",
        }

    @property
    def environment_markers(self) -> str:
        """The PEP 751 `environments` entry: where this lock may be installed."""
        env = self.marker_environment
        return (f"sys_platform == 'linux' and platform_machine == '{env['platform_machine']}' "
                f"and python_version == '{env['python_version']}' "
                "and platform_python_implementation == 'CPython'")

    @cached_property
    def platform_tags(self) -> list[str]:
        """manylinux tags the pod accepts, best first (linux_* wheels are not portable)."""
        glibc_minor = int(self.glibc.split(".")[1])
        tags = []
        for minor in range(glibc_minor, _MANYLINUX_FLOOR[self.arch] - 1, -1):
            tags.append(f"manylinux_2_{minor}_{self.arch}")
            if minor in _LEGACY_ALIASES:
                tags.append(f"{_LEGACY_ALIASES[minor]}_{self.arch}")
        return tags

    @cached_property
    def tag_priority(self) -> dict[str, int]:
        """Every wheel tag the target accepts (as `py-abi-platform`), mapped to its rank."""
        from packaging.tags import compatible_tags, cpython_tags

        version = self.python_minor
        ordered = [*cpython_tags(version, abis=[self.python_tag, "abi3", "none"],
                                 platforms=self.platform_tags),
                   *compatible_tags(version, interpreter=self.python_tag,
                                    platforms=self.platform_tags)]
        priority: dict[str, int] = {}
        for tag in ordered:
            priority.setdefault(str(tag), len(priority))
        return priority

    @cached_property
    def _ranks(self) -> dict[str, int | None]:
        return {}

    def wheel_rank(self, filename: str) -> int | None:
        """How well a wheel fits the target (0 is best), or None when it cannot be installed.

        Memoised by the filename's tag part: an index page repeats a few tag strings over
        thousands of files.
        """
        part = filename[:-4].lower().rsplit("-", 3)[1:]
        key = "-".join(part)
        ranks = self._ranks
        if key not in ranks:
            priority = self.tag_priority
            found = [priority[tag] for x in part[0].split(".") for y in part[1].split(".")
                     for z in part[2].split(".") if (tag := f"{x}-{y}-{z}") in priority
                     ] if len(part) == 3 else []
            ranks[key] = min(found) if found else None
        return ranks[key]

    def python_matches(self, requires_python: str | None) -> bool:
        return not requires_python or _python_matches(requires_python, self.python_full_version)


@lru_cache(maxsize=4096)
def _python_matches(requires_python: str, python: str) -> bool:
    # Indexes repeat a handful of requires-python strings over thousands of files.
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import Version

    try:
        return SpecifierSet(requires_python).contains(Version(python), prereleases=True)
    except InvalidSpecifier:
        # pip ignores unparseable requires-python; so must a resolver that agrees with it.
        return True
