"""Which filesystem holds a path: a generation on a network volume imports linked packages
from the store, one on a local disk keeps the farm's paths."""

from pathlib import Path

import pytest

from gpulock.env.mounts import filesystem, on_network_volume

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:45 / /workspace rw,nosuid,nodev,relatime shared:20 - fuse.mfsmount mfs#x:9421 rw
41 40 0:46 / /workspace/local\\040disk rw shared:21 - ext4 /dev/sdb1 rw
42 22 0:47 / /mnt/nfs rw shared:22 - nfs4 server:/export rw,vers=4.2
43 22 0:48 / /mnt/ntfs rw shared:23 - fuseblk /dev/sdc1 rw
44 22 0:49 / /mnt/nfs rw shared:24 - tmpfs tmpfs rw
"""


@pytest.mark.parametrize(("path", "kind", "network"), [
    ("/workspace/store/v1", "fuse.mfsmount", True),
    ("/workspace", "fuse.mfsmount", True),
    ("/workspace/local disk/store", "ext4", False),   # the deepest mount point wins
    ("/workspaces/x", "ext4", False),                 # a prefix of a name is not a parent
    ("/mnt/ntfs/store", "fuseblk", False),            # FUSE, but a local disk
    ("/mnt/nfs/store", "tmpfs", False),               # a later mount on the same point wins
    ("/home/user/store", "ext4", False),
])
def test_a_path_is_on_the_deepest_latest_mount_that_holds_it(path: str, kind: str,
                                                             network: bool):
    assert filesystem(Path(path), MOUNTINFO) == kind
    assert on_network_volume(Path(path), MOUNTINFO) is network


def test_nfs_counts_as_a_network_volume():
    without_tmpfs = "\n".join(MOUNTINFO.splitlines()[:4])
    assert filesystem(Path("/mnt/nfs/x"), without_tmpfs) == "nfs4"
    assert on_network_volume(Path("/mnt/nfs/x"), without_tmpfs)


def test_an_unreadable_mount_table_means_a_local_disk():
    assert filesystem(Path("/x"), "garbage without a separator\n") is None
    assert on_network_volume(Path("/x"), "") is False
