"""A power cut the instant a replacement is in place leaves the dest holding the old or the new complete bytes.

The filesystem is a default ``mkfs.ext4`` image (journaled, ``data=ordered``, ``auto_da_alloc`` and, since
Linux 5.6, ``dioread_nolock``) on a loop device with direct I/O, so what the filesystem writes reaches the
image at once. Right after ``sync_file``/``sync_files`` has renamed the new version into place, the filesystem
is cut off as a power loss does: ``EXT4_IOC_SHUTDOWN`` with ``EXT4_GOING_FLAGS_LOGFLUSH`` commits the journal
(the rename with it) and then stops every further write, so data still waiting for writeback never lands.
Unmounting and mounting again replays the journal, as the next boot would. Without an fsync of the temp before
the rename the dest then holds zeros of the new size (an unwritten extent).

Each cut gets a freshly made filesystem: its data then goes to parts of the image file never written before,
whose first write is slow, as a real disk's is; on a filesystem reused cut after cut the loop device often
completes the write before the cut, and a missing fsync shows only now and then. Root, losetup(8), mount(8)
and mkfs.ext4(8) are needed; skipped otherwise, with the reason.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from livedata.files import FileSpec, sync_file, sync_files

EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_LOGFLUSH = 1  # commit the journal, then refuse every further write
CUTS = 20
SIZE = 300  # bytes per version: one block, written by delayed allocation


class LoopExt4:
    """Default ext4 images on a loop device, made afresh (``fresh``) for each cut, mounted at ``mountpoint``."""

    def __init__(self, directory: Path) -> None:
        self.image = str(directory / "fs.img")
        self.mountpoint = str(directory / "mnt")
        self.device: str | None = None
        os.mkdir(self.mountpoint)

    @contextlib.contextmanager
    def fresh(self) -> Iterator[str]:
        """A new, empty filesystem mounted for the block; detached afterwards."""
        with open(self.image, "wb") as f:
            f.truncate(32 * 1024 * 1024)  # sparse: nothing of it written yet
        run(["mkfs.ext4", "-q", "-F", self.image])
        self.device = run(["losetup", "--find", "--show", "--direct-io=on", self.image])
        try:
            self.mount()
            yield self.mountpoint
        finally:
            subprocess.run(["umount", self.mountpoint], capture_output=True)
            subprocess.run(["losetup", "-d", self.device], capture_output=True)
            self.device = None

    def mount(self) -> None:
        assert self.device is not None
        run(["mount", "-t", "ext4", self.device, self.mountpoint])

    def cut_power(self) -> None:
        """Stop the filesystem dead after committing its journal, unmount it, and mount it again (journal replay)."""
        ext4_shutdown(self.mountpoint)
        self.remount()

    def remount(self) -> None:
        """Unmount (after a cut) and mount again: the journal is replayed, as at the next boot."""
        run(["umount", self.mountpoint])
        self.mount()


def run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[LoopExt4]:
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("losetup", "mount", "umount", "mkfs.ext4")):
        pytest.skip("cutting a loop-mounted ext4 needs root, losetup(8), mount(8) and mkfs.ext4(8)")
    loop = LoopExt4(tmp_path)
    try:
        with loop.fresh():
            pass
    except RuntimeError as exc:
        pytest.skip(f"cannot make and mount an ext4 image on a loop device here: {exc}")
    yield loop
    subprocess.run(["umount", "-l", loop.mountpoint], capture_output=True)


def version(cut: int, generation: int) -> bytes:
    """300 non-zero bytes, different for every cut and generation."""
    return (f"cut {cut:02d} generation {generation} ".encode() * SIZE)[:SIZE]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.timeout(90)
def test_a_replaced_file_survives_a_power_cut_at_the_rename(ext4: LoopExt4) -> None:
    for cut in range(CUTS):
        with ext4.fresh() as mountpoint:
            dest = os.path.join(mountpoint, "flags.json")
            old, new = version(cut, 0), version(cut, 1)
            sync_file(FileSpec(dest), old)  # a new name: flushed, its directory too
            sync_file(FileSpec(dest), new, previous=old)  # the watcher's change path
            ext4.cut_power()
            found = _read(dest)
            assert found in (old, new), f"cut {cut}: {found[:40]!r}... ({len(found)} bytes)"


@pytest.mark.timeout(90)
def test_a_replaced_batch_survives_a_power_cut_at_the_renames(ext4: LoopExt4) -> None:
    """A batch large enough to be made durable with one syncfs, all of it replacing existing dests."""
    for cut in range(CUTS):
        with ext4.fresh() as mountpoint:
            specs = [FileSpec(os.path.join(mountpoint, f"node{i}.json")) for i in range(12)]
            olds = [version(cut, 0) + bytes([65 + i]) for i in range(len(specs))]
            news = [version(cut, 1) + bytes([65 + i]) for i in range(len(specs))]
            sync_files(list(zip(specs, olds)))
            sync_files(list(zip(specs, news)))
            ext4.cut_power()
            for spec, old, new in zip(specs, olds, news):
                found = _read(spec.path)
                assert found in (old, new), f"cut {cut}, {spec.path}: {found[:40]!r}... ({len(found)} bytes)"


@pytest.mark.timeout(90)
def test_a_tree_switch_survives_a_power_cut_at_the_data_link(ext4: LoopExt4, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tree dest cut off the instant ``..data`` is renamed to the new snapshot: after the replay ``..data``
    names a snapshot holding the old or the new complete children, never zeros. The snapshot is the reused
    spare (the publisher's hot path); one child changed (fsync each) or twelve (one syncfs) alternately."""
    from livedata import snapshots
    from livedata.tree_apply import TreeDir

    switch = TreeDir.switch
    cutting = [False]

    def switch_then_cut(tree: TreeDir, snapshot: str, changes: str) -> None:
        switch(tree, snapshot, changes)
        if cutting[0]:
            ext4_shutdown(ext4.mountpoint)

    monkeypatch.setattr(TreeDir, "switch", switch_then_cut)
    for cut in range(6):
        with ext4.fresh() as mountpoint:
            dest = os.path.join(mountpoint, "tree")
            publisher = snapshots.TreePublisher(snapshots.TreeSpec(dest, 0o644))
            first = {f"c{i:02d}": version(cut, 0) + bytes([65 + i]) for i in range(20)}
            old = dict(first, c19=version(cut, 1))
            publisher.publish(first)
            publisher.publish(old)  # the first snapshot becomes the spare this publish reuses
            changed = 1 if cut % 2 else 12
            new = dict(old, **{f"c{i:02d}": version(cut, 2) + bytes([65 + i]) for i in range(changed)})
            cutting[0] = True
            with contextlib.suppress(snapshots.TreeWriteError):  # the cut filesystem refuses what follows
                publisher.publish(new)
            cutting[0] = False
            ext4.remount()
            snapshot = os.path.join(dest, os.readlink(os.path.join(dest, snapshots.DATA_LINK)))
            found = {name: _read(os.path.join(snapshot, name)) for name in os.listdir(snapshot)}
            wrong = sorted(name for name, data in found.items() if data not in (old.get(name), new.get(name)))
            assert found in (old, new), f"cut {cut}: children {wrong} hold neither version"


def ext4_shutdown(mountpoint: str) -> None:
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_LOGFLUSH))
    finally:
        os.close(fd)
