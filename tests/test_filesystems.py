"""Every write is flushed before its rename, whatever the filesystem, checked on real mounts with real syscalls.

No filesystem is trusted to order a replacing rename after its data by itself: ext4's ``auto_da_alloc`` does
not with ``dioread_nolock`` (the default since Linux 5.6; tests/test_power_cut.py shows the zeros it leaves).
The ext4 images (journaled in each data mode, and one without a journal) are loop-mounted files (root and
mount(8) needed; skipped otherwise, with the reason); the syscalls a write makes are watched with strace(1)
in a child process.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from livedata.files import FileSpec, sync_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLUSHES = ("fsync", "fdatasync", "syncfs")


def mount_fresh(image_dir: Path, fstype: str, options: str, megabytes: int = 16) -> Iterator[str]:
    """Mount a new file system of ``fstype`` ("ext4", "ext4-nojournal" or "tmpfs") under ``image_dir``; skip the
    test (with the reason) where this process cannot mount. Also used by tests/test_scale.py."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a filesystem needs root and mount(8)")
    mountpoint = str(image_dir / "mnt")
    os.mkdir(mountpoint)
    if fstype == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", mountpoint]
    else:
        image = str(image_dir / "fs.img")
        with open(image, "wb") as f:
            f.truncate(megabytes * 1024 * 1024)
        features = ["-O", "^has_journal"] if fstype == "ext4-nojournal" else []
        subprocess.run(["mkfs.ext4", "-q", "-F", *features, image], check=True, capture_output=True)
        command = ["mount", "-o", f"loop,{options}" if options else "loop", image, mountpoint]
    mounted = subprocess.run(command, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount {fstype} here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", mountpoint], check=False)


MOUNTS = {  # name -> (filesystem, mount options)
    "ext4-default": ("ext4", ""),  # data=ordered, auto_da_alloc, dioread_nolock
    "ext4-ordered": ("ext4", "data=ordered"),
    "ext4-writeback": ("ext4", "data=writeback"),
    "ext4-without-journal": ("ext4-nojournal", ""),
    "tmpfs": ("tmpfs", "size=1m"),
}


@pytest.fixture
def mounted(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh mount of the kind named by the test's parameter (see MOUNTS)."""
    yield from mount_fresh(tmp_path, *MOUNTS[request.param])


def _flushes_of_one_sync(path: str, data: bytes, previous: bytes | None) -> list[str]:
    """The flush syscalls (fsync, fdatasync, syncfs) one ``sync_file`` makes, seen by strace in a child."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    trace = path + ".trace"
    snippet = textwrap.dedent(
        f"""
        from livedata.files import FileSpec, Outcome, sync_file
        assert sync_file(FileSpec({path!r}), {data!r}, previous={previous!r}) is Outcome.WRITTEN
        """
    )
    command = ["strace", "-f", "-qq", "-o", trace, "-e", f"trace={','.join(FLUSHES)}", sys.executable, "-c", snippet]
    subprocess.run(command, check=True, cwd=REPO, capture_output=True)
    try:
        with open(trace) as f:
            return [line.split()[1].split("(")[0] for line in f if line.split()[1].startswith(FLUSHES)]
    finally:
        os.unlink(trace)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mounted", list(MOUNTS), indirect=True)
@pytest.mark.parametrize("hinted", [False, True], ids=["inspected", "previous-hint"])
def test_every_filesystem_flushes_a_replacement_before_its_rename(mounted: str, hinted: bool) -> None:
    """A new dest: its temp, then its directory. A replaced one: its temp (the rename over an existing name
    needs no directory fsync, see livedata.files)."""
    dest = os.path.join(mounted, "flags.json")
    assert _flushes_of_one_sync(dest, b"v1", None) == ["fsync", "fsync"]
    assert _flushes_of_one_sync(dest, b"v2", b"v1" if hinted else None) == ["fsync"]
    with open(dest, "rb") as f:
        assert f.read() == b"v2"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mounted", ["ext4-default"], indirect=True)
def test_a_dest_removed_behind_a_hint_is_flushed_like_a_new_one(mounted: str) -> None:
    """The caller believes the dest holds v1, but it was deleted: the rename will create the name, so the
    directory is flushed too."""
    dest = os.path.join(mounted, "flags.json")
    sync_file(FileSpec(dest), b"v1")
    os.unlink(dest)
    assert _flushes_of_one_sync(dest, b"v2", b"v1") == ["fsync", "fsync"]
