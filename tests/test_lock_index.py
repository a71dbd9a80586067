"""`gpulock lock` against real index servers on 127.0.0.1, serving wheels built here."""

from __future__ import annotations

import hashlib
import os

import pytest

from gpulock.lock import lockfile
from tests.conftest import Project
from tests.support.dists import make_sdist, make_wheel


def manifest(default: str, groups: str, python: str = "3.10", extra: str = "") -> str:
    return (f'[project]\nname = "demo"\npython = "{python}"\nindex = "{default}"\n{extra}\n'
            + groups)


def test_resolves_transitive_dependencies_to_the_newest_versions(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0", requires=["lib>=1.0"])
    for version in ("0.9", "1.0", "1.10", "1.2"):
        make_wheel(index.folder, "lib", version)
    project.write(manifest(index.url, '[groups.main]\npackages = ["app"]\n'))
    lock = project.lock()
    assert {p.name: p.version for p in lock.packages} == {"app": "1.0", "lib": "1.10"}
    app = lock.package("app")
    assert app.dependencies == ("lib",) and app.groups == ("main",)
    wheel = (index.folder / app.wheel.name).read_bytes()
    assert app.wheel.sha256 == hashlib.sha256(wheel).hexdigest()
    assert app.wheel.size == len(wheel)
    assert app.index == index.url


def test_a_group_index_is_the_only_source_of_its_packages(make_index, project: Project):
    default, private = make_index(), make_index()
    # Dependency confusion (pip#8606): a higher version on the default index must not win.
    make_wheel(default.folder, "torchish", "99.0")
    make_wheel(private.folder, "torchish", "1.0", requires=["helper"])
    make_wheel(default.folder, "helper", "2.0")
    make_wheel(private.folder, "helper", "3.0")
    project.write(manifest(default.url, f'[groups.gpu]\nindex = "{private.url}"\n'
                                        'packages = ["torchish"]\n'))
    lock = project.lock()
    assert lock.package("torchish").version == "1.0"
    assert lock.package("torchish").index == private.url
    # Dependencies not named in the group come from the default index.
    assert lock.package("helper").version == "2.0"
    assert lock.package("helper").index == default.url


def test_no_deps_group_keeps_its_packages_but_not_their_dependencies(make_index,
                                                                     project: Project):
    index = make_index()
    make_wheel(index.folder, "funasr", "1.1.0", requires=["umap"])
    make_wheel(index.folder, "umap-learn", "0.5")
    project.write(manifest(index.url, '[groups.special]\nno_deps = true\n'
                                      'packages = ["funasr==1.1.0", "umap-learn"]\n'))
    assert project.pins() == {"funasr": "1.1.0", "umap-learn": "0.5"}


def test_extras_pull_in_their_requirements(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "web", "1.0", requires=["core"],
               extras={"speed": ["fastjson>=2"], "unused": ["never"]})
    make_wheel(index.folder, "core", "1.0")
    make_wheel(index.folder, "fastjson", "2.1")
    project.write(manifest(index.url, '[groups.main]\npackages = ["web[speed]"]\n'))
    lock = project.lock()
    assert {p.name: p.version for p in lock.packages} == {
        "web": "1.0", "core": "1.0", "fastjson": "2.1"}
    assert set(lock.package("web").dependencies) == {"core", "fastjson"}


@pytest.mark.parametrize(("python", "platform", "expected"), [
    ("3.10", "linux_x86_64", {"app", "backport"}),
    ("3.12", "linux_x86_64", {"app"}),
    ("3.12", "linux_aarch64", {"app", "armlib"}),
])
def test_markers_are_evaluated_for_the_target_not_the_host(make_index, project: Project,
                                                            python, platform, expected):
    index = make_index()
    make_wheel(index.folder, "app", "1.0", requires=[
        'backport; python_version < "3.11"', 'armlib; platform_machine == "aarch64"',
        'winlib; sys_platform == "win32"'])
    for name in ("backport", "armlib", "winlib"):
        make_wheel(index.folder, name, "1.0")
    project.write(manifest(index.url, '[groups.main]\npackages = ["app"]\n', python=python,
                           extra=f'platform = "{platform}"'))
    assert set(project.pins()) == expected


def test_wheels_are_chosen_by_the_targets_tags(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "native", "1.0", tag="cp310-cp310-manylinux_2_17_x86_64")
    make_wheel(index.folder, "native", "1.0", tag="cp312-cp312-manylinux_2_17_x86_64")
    make_wheel(index.folder, "native", "1.0", tag="cp310-cp310-manylinux_2_17_aarch64")
    make_wheel(index.folder, "native", "1.0", tag="cp310-abi3-manylinux_2_17_x86_64")
    # Too new for a glibc 2.28 pod: must not be chosen even though it is the only 2.0 wheel.
    make_wheel(index.folder, "native", "2.0", tag="cp310-cp310-manylinux_2_34_x86_64")
    project.write(manifest(index.url, '[groups.main]\npackages = ["native"]\n'))
    wheel = project.lock().package("native").wheel
    assert wheel.name == "native-1.0-cp310-cp310-manylinux_2_17_x86_64.whl"


@pytest.mark.parametrize("json_api", [True, False])
def test_requires_python_of_files_is_checked_against_the_target(make_index, project: Project,
                                                                json_api):
    index = make_index(json_api=json_api)
    make_wheel(index.folder, "modern", "1.0")
    make_wheel(index.folder, "modern", "2.0")
    index.requires_python["modern-2.0-py3-none-any.whl"] = ">=3.11"
    project.write(manifest(index.url, '[groups.main]\npackages = ["modern"]\n'))
    assert project.pins() == {"modern": "1.0"}
    project.write(manifest(index.url, '[groups.main]\npackages = ["modern"]\n', python="3.11"))
    assert project.pins("--upgrade") == {"modern": "2.0"}


def test_cuda_local_labels_follow_project_cuda(make_index, project: Project):
    default, torch_index = make_index(), make_index()
    for label in ("cu118", "cu121", "cpu"):
        make_wheel(torch_index.folder, "torch", f"2.4.1+{label}",
                   tag="cp310-cp310-manylinux_2_17_x86_64")
    groups = f'[groups.pytorch]\nindex = "{torch_index.url}"\npackages = ["torch==2.4.1"]\n'
    project.write(manifest(default.url, groups, extra='cuda = "12.1"'))
    assert project.pins() == {"torch": "2.4.1+cu121"}

    project.write(manifest(default.url, groups, extra='cuda = "11.8"'))
    assert project.pins() == {"torch": "2.4.1+cu118"}


def test_a_cuda_build_for_another_cuda_is_an_error_that_says_so(make_index, project: Project):
    default, torch_index = make_index(), make_index()
    make_wheel(torch_index.folder, "torch", "2.4.1+cu118", tag="cp310-cp310-manylinux_2_17_x86_64")
    project.write(manifest(default.url, f'[groups.pytorch]\nindex = "{torch_index.url}"\n'
                                        'packages = ["torch==2.4.1"]\n', extra='cuda = "12.1"'))
    result = project.gpulock("lock")
    assert result.code == 1
    assert "no version of torch satisfies torch==2.4.1" in result.err
    assert "2.4.1+cu118 is built for another CUDA than project.cuda = 12.1" in result.err
    assert "Traceback" not in result.err


def test_yanked_files_are_skipped_unless_pinned_exactly(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "lib", "1.0")
    make_wheel(index.folder, "lib", "1.1")
    index.yanked.add("lib-1.1-py3-none-any.whl")
    project.write(manifest(index.url, '[groups.main]\npackages = ["lib"]\n'))
    assert project.pins() == {"lib": "1.0"}
    project.write(manifest(index.url, '[groups.main]\npackages = ["lib==1.1"]\n'))
    assert project.pins() == {"lib": "1.1"}


def test_metadata_comes_from_advertised_metadata_files(make_index, project: Project):
    index = make_index(advertise_metadata=True, serve_metadata=True)
    wheel = make_wheel(index.folder, "big", "1.0", requires=["small"],
                       files={"big/blob.bin": os.urandom(2_000_000)})
    make_wheel(index.folder, "small", "1.0")
    project.write(manifest(index.url, '[groups.main]\npackages = ["big"]\n'))
    assert project.pins() == {"big": "1.0", "small": "1.0"}
    assert index.file_requests(wheel.name) == []
    assert index.bytes_sent[f"/files/{wheel.name}.metadata"] > 0


def test_metadata_comes_from_range_requests_when_not_advertised(make_index, project: Project):
    index = make_index()
    size = 5_000_000
    wheel = make_wheel(index.folder, "big", "1.0", requires=["small"],
                       files={"big/blob.bin": os.urandom(size)})
    make_wheel(index.folder, "small", "1.0")
    project.write(manifest(index.url, '[groups.main]\npackages = ["big"]\n'))
    assert project.pins() == {"big": "1.0", "small": "1.0"}
    assert all(r.startswith("bytes=") for r in index.file_requests(wheel.name))
    assert index.bytes_sent[f"/files/{wheel.name}"] < 200_000 < size


def test_metadata_falls_back_to_a_full_download_that_also_hashes(make_index, project: Project):
    index = make_index(ranges=False, hashes=False)
    wheel = make_wheel(index.folder, "big", "1.0", files={"big/blob.bin": os.urandom(300_000)})
    project.write(manifest(index.url, '[groups.main]\npackages = ["big"]\n'))
    locked = project.lock().package("big").wheel
    assert locked.sha256 == hashlib.sha256(wheel.read_bytes()).hexdigest()
    # The download that read the metadata also paid for the hash: one full GET, not two.
    assert len(index.file_requests(wheel.name)) == 1


def test_a_file_served_without_a_hash_is_downloaded_once_and_hashed(make_index,
                                                                     project: Project):
    index = make_index(hashes=False, advertise_metadata=True, serve_metadata=True)
    wheel = make_wheel(index.folder, "nohash", "1.0")
    project.write(manifest(index.url, '[groups.main]\npackages = ["nohash"]\n'))
    locked = project.lock().package("nohash").wheel
    assert locked.sha256 == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert locked.size == wheel.stat().st_size
    assert index.file_requests(wheel.name) == [""]


def test_an_sdist_with_reliable_pkg_info_is_locked_without_building(make_index,
                                                                     project: Project):
    index = make_index()
    # The build would say otherwise: if gpulock built it, 'built-dep' would appear.
    sdist = make_sdist(index.folder, "srconly", "1.0", requires=["built-dep"],
                       pkg_info_requires=["dep"], metadata_version="2.2")
    make_wheel(index.folder, "dep", "1.0")
    make_wheel(index.folder, "built-dep", "1.0")
    project.write(manifest(index.url, '[groups.main]\npackages = ["srconly"]\n'))
    lock = project.lock()
    assert {p.name for p in lock.packages} == {"srconly", "dep"}
    locked = lock.package("srconly")
    assert locked.wheel is None
    assert locked.sdist.sha256 == hashlib.sha256(sdist.read_bytes()).hexdigest()


def test_an_sdist_with_unreliable_pkg_info_is_built_for_its_metadata(make_index,
                                                                      project: Project):
    index = make_index()
    make_sdist(index.folder, "legacy", "1.0", requires=["built-dep"], pkg_info_requires=[],
               metadata_version="2.1")
    make_sdist(index.folder, "dynamic", "1.0", requires=["built-dep"], pkg_info_requires=[],
               metadata_version="2.2", dynamic=["Requires-Dist"])
    make_wheel(index.folder, "built-dep", "1.0")
    project.write(manifest(index.url, '[groups.main]\npackages = ["legacy", "dynamic"]\n'))
    lock = project.lock()
    assert lock.package("legacy").dependencies == ("built-dep",)
    assert lock.package("dynamic").dependencies == ("built-dep",)


def test_a_wheel_is_preferred_over_the_sdist_of_the_same_version(make_index, project: Project):
    index = make_index()
    make_sdist(index.folder, "both", "1.0")
    make_wheel(index.folder, "both", "1.0")
    project.write(manifest(index.url, '[groups.main]\npackages = ["both"]\n'))
    locked = project.lock().package("both")
    assert locked.wheel is not None and locked.sdist is None


def test_an_existing_lock_pins_are_kept_until_upgraded(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0", requires=["lib"])
    make_wheel(index.folder, "lib", "1.0")
    project.write(manifest(index.url, '[groups.main]\npackages = ["app"]\n'))
    assert project.pins() == {"app": "1.0", "lib": "1.0"}

    make_wheel(index.folder, "lib", "2.0")
    make_wheel(index.folder, "app", "2.0", requires=["lib"])
    make_wheel(index.folder, "extra", "1.0")
    # A manifest change re-resolves, but what was pinned and still fits stays.
    project.write(manifest(index.url, '[groups.main]\npackages = ["app", "extra"]\n'))
    assert project.pins() == {"app": "1.0", "lib": "1.0", "extra": "1.0"}
    assert project.pins("--upgrade-package", "lib") == {"app": "1.0", "lib": "2.0",
                                                        "extra": "1.0"}
    assert project.pins("--upgrade") == {"app": "2.0", "lib": "2.0", "extra": "1.0"}


def test_a_pin_that_no_longer_fits_moves(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "lib", "1.0")
    make_wheel(index.folder, "lib", "2.0")
    project.write(manifest(index.url, '[groups.main]\npackages = ["lib<2"]\n'))
    assert project.pins() == {"lib": "1.0"}
    project.write(manifest(index.url, '[groups.main]\npackages = ["lib>=2"]\n'))
    result = project.gpulock("lock")
    assert "~ lib 1.0 -> 2.0 (upgrade)" in result.err


def test_locking_twice_gives_byte_identical_files(make_index, project: Project, tmp_path):
    index = make_index()
    make_wheel(index.folder, "app", "1.0", requires=["b", "a", "c"])
    for name in "abc":
        make_wheel(index.folder, name, "1.0")
    project.write(manifest(index.url, '[groups.main]\npackages = ["app"]\n'))
    project.lock()
    first = project.lock_path.read_bytes()
    project.lock_path.unlink()
    import shutil

    shutil.rmtree(tmp_path / "cache")
    project.lock()
    assert project.lock_path.read_bytes() == first


def test_an_unchanged_manifest_relocks_without_touching_the_network(make_index,
                                                                     project: Project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    project.write(manifest(index.url, '[groups.main]\npackages = ["app"]\n'))
    project.lock()
    before = len(index.requests)
    result = project.gpulock("lock")
    assert result.code == 0 and "up to date" in result.err
    assert len(index.requests) == before


def test_a_changed_manifest_revalidates_cached_pages(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    make_wheel(index.folder, "other", "1.0")
    project.write(manifest(index.url, '[groups.main]\npackages = ["app"]\n'))
    project.lock()
    project.write(manifest(index.url, '[groups.main]\npackages = ["app", "other"]\n'))
    project.lock()
    # The app page was answered 304 from the cache's ETag; only 'other' was new.
    assert index.bytes_sent["/simple/app/"] == len(index._page("app", True))


def test_lock_check_fails_when_the_lock_is_missing_or_stale(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    project.write(manifest(index.url, '[groups.main]\npackages = ["app"]\n'))
    missing = project.gpulock("lock", "--check")
    assert missing.code == 1 and "does not exist" in missing.err
    project.lock()
    assert project.gpulock("lock", "--check").code == 0
    # Comments and formatting do not make a lock stale; content does.
    project.write("# a comment\n" + manifest(index.url, '[groups.main]\npackages = [ "app" ]\n'))
    assert project.gpulock("lock", "--check").code == 0
    project.write(manifest(index.url, '[groups.main]\npackages = ["app>=1"]\n'))
    stale = project.gpulock("lock", "--check")
    assert stale.code == 1 and "stale" in stale.err
    assert lockfile.read(project.lock_path).package("app")  # --check wrote nothing


def test_conflicts_are_explained_as_chains_of_requirements(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "transformers", "4.35.0", requires=["tokenizers<0.15"])
    make_wheel(index.folder, "tokenizers", "0.14.1", requires=["huggingface-hub<0.18"])
    make_wheel(index.folder, "tokenizers", "0.15.0", requires=["huggingface-hub<1.0"])
    make_wheel(index.folder, "huggingface-hub", "0.17.3")
    make_wheel(index.folder, "huggingface-hub", "1.0.0")
    project.write(manifest(index.url, '[groups.standard]\npackages = ["transformers==4.35.0"]\n'
                                      '[groups.extra]\npackages = ["huggingface-hub>=1.0"]\n'))
    result = project.gpulock("lock")
    assert result.code == 1
    assert "Traceback" not in result.err
    assert "the requirements on huggingface-hub conflict" in result.err
    assert ("group 'standard' asks for transformers==4.35.0, and transformers 4.35.0 depends "
            "on tokenizers<0.15, and tokenizers 0.14.1 depends on huggingface-hub<0.18"
            in result.err)
    assert "group 'extra' asks for huggingface-hub>=1.0" in result.err
    assert not project.lock_path.exists()


def test_a_missing_package_is_a_clear_error(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "lib", "1.0", tag="cp312-cp312-manylinux_2_17_x86_64")
    project.write(manifest(index.url, '[groups.main]\npackages = ["lib", "ghost"]\n'))
    result = project.gpulock("lock")
    assert result.code == 1
    assert "Traceback" not in result.err
    assert "no version of" in result.err


def test_a_package_with_no_wheel_for_the_target_says_which_wheels_exist(make_index,
                                                                        project: Project):
    index = make_index()
    make_wheel(index.folder, "lib", "1.0", tag="cp312-cp312-manylinux_2_17_x86_64")
    project.write(manifest(index.url, '[groups.main]\npackages = ["lib"]\n'))
    result = project.gpulock("lock")
    assert result.code == 1
    assert ("lib 1.0 has no wheel for CPython 3.10 on manylinux_2_28_x86_64 (only "
            "cp312-cp312-manylinux_2_17_x86_64) and no sdist") in result.err


def test_a_find_links_folder_works_as_a_group_index(tmp_path, make_index, project: Project):
    default = make_index()
    folder = tmp_path / "wheels"
    make_wheel(folder, "local", "1.0", requires=["remote"])
    make_wheel(default.folder, "remote", "1.0")
    project.write(manifest(default.url, f'[groups.vendored]\nindex = "{folder.as_uri()}"\n'
                                        'packages = ["local"]\n'))
    lock = project.lock()
    assert lock.package("local").wheel.url.startswith("file://")
    assert lock.package("local").index == folder.as_uri()
    assert lock.package("remote").index == default.url


def test_html_only_indexes_are_read_like_json_ones(make_index, project: Project):
    index = make_index(json_api=False)
    make_wheel(index.folder, "app", "1.0", requires=["lib"])
    make_wheel(index.folder, "lib", "1.0")
    project.write(manifest(index.url, '[groups.main]\npackages = ["app"]\n'))
    lock = project.lock()
    assert lock.package("lib").wheel.size == (index.folder / lock.package("lib").wheel.name
                                              ).stat().st_size


def test_no_build_locks_only_wheels_and_names_what_has_none(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0", requires=["lib"])
    make_wheel(index.folder, "lib", "1.0")
    make_sdist(index.folder, "lib", "2.0")  # newer, but it would be compiled on the pod
    make_sdist(index.folder, "srconly", "1.0")
    project.write(manifest(index.url, '[groups.main]\npackages = ["app"]\n',
                           extra="no_build = true"))
    assert project.pins() == {"app": "1.0", "lib": "1.0"}
    project.write(manifest(index.url, '[groups.main]\npackages = ["app"]\n'
                                      '[groups.src]\nno_build = true\npackages = ["srconly"]\n'))
    result = project.gpulock("lock")
    assert result.code == 1 and "srconly 1.0 only have sdists, and no_build is set" in result.err
    # Only the group's own packages: the project still takes lib's newer sdist.
    project.write(manifest(index.url, '[groups.main]\npackages = ["app"]\n'
                                      '[groups.src]\nno_build = true\npackages = ["lib<2"]\n'))
    assert project.pins() == {"app": "1.0", "lib": "1.0"}


@pytest.mark.parametrize("policy, expected", [
    (None, "1.0"), ("allow", "2.0b2"), ("if-necessary", "1.0"), ("explicit", "1.0"),
    ("disallow", "1.0")])
def test_prerelease_policies_choose_as_uv_does(make_index, project: Project, policy, expected):
    index = make_index()
    for version in ("1.0", "2.0b1", "2.0b2"):
        make_wheel(index.folder, "lib", version)
    setting = f'prerelease = "{policy}"' if policy else ""
    project.write(manifest(index.url, '[groups.main]\npackages = ["lib"]\n', extra=setting))
    assert project.pins() == {"lib": expected}


def test_a_group_may_allow_pre_releases_for_its_own_packages(make_index, project: Project):
    index = make_index()
    for name in ("lib", "other"):
        for version in ("1.0", "2.0rc1"):
            make_wheel(index.folder, name, version)
    project.write(manifest(index.url, '[groups.main]\npackages = ["other"]\n'
                                      '[groups.edge]\nprerelease = "allow"\npackages = ["lib"]\n'))
    assert project.pins() == {"lib": "2.0rc1", "other": "1.0"}
    project.write(manifest(index.url, '[groups.main]\npackages = ["other"]\n',
                           extra='prerelease = "sometimes"'))
    result = project.gpulock("lock")
    assert result.code == 1 and "prerelease = 'sometimes' must be one of" in result.err


def test_a_version_only_a_pre_release_could_satisfy_names_the_policy(make_index,
                                                                     project: Project):
    index = make_index()
    for version in ("1.0", "2.0b1"):
        make_wheel(index.folder, "lib", version)
    project.write(manifest(index.url, '[groups.main]\npackages = ["lib>1.0"]\n',
                           extra='prerelease = "disallow"'))
    result = project.gpulock("lock")
    assert result.code == 1 and "no version of lib satisfies lib>1.0" in result.err
    assert 'is a pre-release, which prerelease = "disallow" leaves out' in result.err


def test_upgrading_a_package_the_project_does_not_have_is_an_error(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    project.write(manifest(index.url, '[groups.main]\npackages = ["app"]\n'))
    project.lock()
    result = project.gpulock("lock", "--upgrade-package", "nosuchpkg")
    assert result.code == 1 and "--upgrade-package nosuchpkg: no package" in result.err
    assert project.gpulock("lock", "--upgrade-package", "App").code == 0
