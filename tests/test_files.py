"""Tests for livedata.files on the real filesystem: content, atomicity, metadata, failures, batches, cleanup.

The suite runs as root (it needs chown to arbitrary ids and tmpfs mounts); tests that need something the
machine does not allow skip with the reason. The private-temp and ordering checks watch the real syscalls
through a Python audit hook (``sys.addaudithook``) instead of mocking anything in the module.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

import livedata.files
from livedata import files
from livedata.files import (
    FileSpec,
    FileWriteError,
    Outcome,
    cleanup_stale_temp_files,
    is_temp_name,
    matches,
    remove_file,
    sync_file,
    sync_files,
    temp_pid,
    temp_prefix,
    touch,
)

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="these tests chown to arbitrary ids: run as root")


# ------------------------------------------------------------------------------------------------ helpers


def temps_under(directory: str) -> list[str]:
    return [
        os.path.join(root, name)
        for root, _dirs, names in os.walk(directory)
        for name in names
        if is_temp_name(name)
    ]


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def put(path: str, data: bytes, mode: int = 0o400) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


AuditHandler = Callable[[str, tuple], None]  # type: ignore[type-arg]
_handlers: list[AuditHandler] = []
_in_hook = threading.local()


def _dispatch(event: str, args: tuple) -> None:  # type: ignore[type-arg]
    if not _handlers or getattr(_in_hook, "busy", False):
        return
    _in_hook.busy = True  # handlers may make syscalls that raise audit events themselves
    try:
        for handler in list(_handlers):
            handler(event, args)
    finally:
        _in_hook.busy = False


sys.addaudithook(_dispatch)  # audit hooks cannot be removed; it does nothing while no test listens


@pytest.fixture
def audit() -> Iterator[list[AuditHandler]]:
    """Append handlers to see the real syscalls the module makes. Handlers must not raise: an exception in
    an audit hook aborts the audited call, so they record and the test asserts afterwards."""
    yield _handlers
    _handlers.clear()


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[str]:
    """A 64 KiB tmpfs, to run out of space (and to turn read-only) for real."""
    mountpoint = os.path.join(tmp_path, "small")
    os.mkdir(mountpoint)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", mountpoint],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", mountpoint], check=True)


@pytest.fixture
def shared_dir() -> Iterator[str]:
    """A directory an unprivileged user can reach and write (pytest's tmp_path is root-only)."""
    directory = tempfile.mkdtemp(prefix="livedata-files-")
    os.chmod(directory, 0o777)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


# ------------------------------------------------------------------------------------------ content


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "data",
    [bytes(range(256)) * 3, b"", os.urandom(1024 * 1024)],
    ids=["binary", "empty", "1MiB"],
)
def test_content_is_written_byte_for_byte(tmp_path: Path, data: bytes) -> None:
    spec = FileSpec(os.path.join(tmp_path, "dest"))
    assert sync_file(spec, data) is Outcome.WRITTEN
    assert read(spec.path) == data
    status = os.lstat(spec.path)
    assert stat.S_ISREG(status.st_mode)
    assert stat.S_IMODE(status.st_mode) == 0o400
    assert matches(spec, data)
    assert temps_under(str(tmp_path)) == []


@pytest.mark.timeout(60)
def test_concurrent_reader_only_sees_complete_contents(tmp_path: Path) -> None:
    spec = FileSpec(os.path.join(tmp_path, "dest"), 0o644)
    versions = [b"a" * 1, b"b" * 8192, b"c" * 65536, b"d" * 300]
    sync_file(spec, versions[0])
    stop = threading.Event()
    first_read = threading.Event()
    bad: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                seen = read(spec.path)
            except OSError as exc:
                bad.append(f"read failed: {exc!r}")
                continue
            reads += 1
            first_read.set()
            if seen not in versions:
                bad.append(f"partial content of {len(seen)} bytes")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    assert first_read.wait(10), "reader thread never managed a read"
    for i in range(300):
        assert sync_file(spec, versions[(i + 1) % len(versions)]) is Outcome.WRITTEN
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert bad == []
    assert reads > 1


# ----------------------------------------------------------------------------------------- unchanged


@pytest.mark.timeout(30)
def test_equal_content_is_left_alone_but_drifted_mode_is_fixed_in_place(tmp_path: Path) -> None:
    spec = FileSpec(os.path.join(tmp_path, "dest"), 0o440)
    sync_file(spec, b"same")
    before = os.stat(spec.path)

    assert sync_file(spec, b"same") is Outcome.UNCHANGED
    after = os.stat(spec.path)
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (before.st_ino, before.st_mtime_ns,
                                                                     before.st_ctime_ns)

    os.chmod(spec.path, 0o666)
    assert not matches(spec, b"same")
    assert sync_file(spec, b"same") is Outcome.METADATA_FIXED
    fixed = os.stat(spec.path)
    assert fixed.st_ino == before.st_ino, "metadata must be fixed in place, not by a rename"
    assert stat.S_IMODE(fixed.st_mode) == 0o440
    assert read(spec.path) == b"same"
    assert matches(spec, b"same")


@pytest.mark.timeout(30)
def test_different_content_of_the_same_size_is_rewritten(tmp_path: Path) -> None:
    spec = FileSpec(os.path.join(tmp_path, "dest"))
    sync_file(spec, b"abcd")
    inode = os.stat(spec.path).st_ino
    assert sync_file(spec, b"abce") is Outcome.WRITTEN
    assert read(spec.path) == b"abce"
    assert os.stat(spec.path).st_ino != inode


# ------------------------------------------------------------------------------------ owner and mode


@pytest.mark.timeout(30)
def test_uid_and_gid_zero_are_applied_not_ignored(tmp_path: Path) -> None:
    path = os.path.join(tmp_path, "dest")
    put(path, b"data", 0o400)
    os.chown(path, NOBODY, NOBODY)
    spec = FileSpec(path, 0o400, owner=0, group=0)
    assert not matches(spec, b"data")

    assert sync_file(spec, b"data") is Outcome.METADATA_FIXED
    status = os.stat(path)
    assert (status.st_uid, status.st_gid) == (0, 0)


@pytest.mark.timeout(30)
def test_gid_zero_is_applied_on_a_fresh_write(tmp_path: Path) -> None:
    directory = os.path.join(tmp_path, "setgid")
    os.mkdir(directory)
    os.chown(directory, 0, NOBODY)
    os.chmod(directory, 0o2755)  # new files inherit the directory's group unless we set it
    spec = FileSpec(os.path.join(directory, "dest"), group=0)
    assert sync_file(spec, b"data") is Outcome.WRITTEN
    assert os.stat(spec.path).st_gid == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "in-place"])
@pytest.mark.parametrize(
    ("owner", "group", "expected"),
    [(NOBODY, None, (NOBODY, 0)), (None, NOBODY, (0, NOBODY)), (NOBODY, NOBODY, (NOBODY, NOBODY))],
    ids=["owner-only", "group-only", "both"],
)
def test_owner_and_group_are_independent(
    tmp_path: Path, existing: bool, owner: int | None, group: int | None, expected: tuple[int, int]
) -> None:
    path = os.path.join(tmp_path, "dest")
    if existing:
        put(path, b"data", 0o640)
    spec = FileSpec(path, 0o640, owner=owner, group=group)
    outcome = sync_file(spec, b"data")
    assert outcome is (Outcome.METADATA_FIXED if existing else Outcome.WRITTEN)
    status = os.stat(path)
    assert (status.st_uid, status.st_gid) == expected
    assert matches(spec, b"data")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "in-place"])
def test_setuid_mode_survives_the_chown(tmp_path: Path, existing: bool) -> None:
    path = os.path.join(tmp_path, "dest")
    if existing:
        put(path, b"#!/bin/true\n", 0o4755)
    spec = FileSpec(path, 0o4755, owner=NOBODY)
    sync_file(spec, b"#!/bin/true\n")
    status = os.stat(path)
    assert status.st_uid == NOBODY
    assert stat.S_IMODE(status.st_mode) == 0o4755


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("mask", "mode"), [(0o077, 0o644), (0o022, 0o666), (0o777, 0o400)])
def test_mode_is_exact_whatever_the_umask(tmp_path: Path, umask: Callable[[int], int], mask: int,
                                          mode: int) -> None:
    umask(mask)
    spec = FileSpec(os.path.join(tmp_path, "dest"), mode)
    sync_file(spec, b"data")
    assert stat.S_IMODE(os.stat(spec.path).st_mode) == mode


@pytest.mark.timeout(30)
def test_missing_parent_directories_are_created_readable_by_all(tmp_path: Path,
                                                                umask: Callable[[int], int]) -> None:
    umask(0o077)
    spec = FileSpec(os.path.join(tmp_path, "a", "b", "c", "dest"), 0o644)
    assert sync_file(spec, b"data") is Outcome.WRITTEN
    assert read(spec.path) == b"data"
    for relative in ("a", "a/b", "a/b/c"):
        assert stat.S_IMODE(os.stat(os.path.join(tmp_path, relative)).st_mode) == 0o755, relative


# ------------------------------------------------------------------------------------------- symlinks


@pytest.mark.timeout(30)
def test_symlink_at_dest_is_replaced_and_its_target_untouched(tmp_path: Path) -> None:
    target = os.path.join(tmp_path, "precious")
    put(target, b"precious", 0o600)
    dest = os.path.join(tmp_path, "dest")
    os.symlink(target, dest)

    assert sync_file(FileSpec(dest, 0o644), b"new") is Outcome.WRITTEN
    assert not os.path.islink(dest)
    assert read(dest) == b"new"
    assert read(target) == b"precious"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


@pytest.mark.timeout(30)
def test_symlink_to_identical_content_does_not_count_as_in_sync(tmp_path: Path) -> None:
    target = os.path.join(tmp_path, "elsewhere")
    put(target, b"data", 0o400)
    spec = FileSpec(os.path.join(tmp_path, "dest"))
    os.symlink(target, spec.path)
    assert not matches(spec, b"data")

    assert sync_file(spec, b"data") is Outcome.WRITTEN
    assert not os.path.islink(spec.path)
    assert matches(spec, b"data")


# ------------------------------------------------------------------------- temp file, watched via audit


@pytest.mark.timeout(30)
def test_temp_file_is_private_and_owned_before_any_data(tmp_path: Path, umask: Callable[[int], int],
                                                       audit: list[AuditHandler]) -> None:
    umask(0)  # so that only the module's own choice of creation bits protects the temp
    spec = FileSpec(os.path.join(tmp_path, "dest"), 0o644, owner=NOBODY, group=NOBODY)
    opened: list[tuple[str, int]] = []
    observed: list[tuple[str, str, int, int, int, int]] = []

    def watch(event: str, args: tuple) -> None:  # type: ignore[type-arg]
        if event == "open" and isinstance(args[0], str) and is_temp_name(args[0]):
            opened.append((args[0], args[2]))
        elif event in ("os.chown", "os.chmod") and isinstance(args[0], int):
            status = os.fstat(args[0])
            name = os.readlink(f"/proc/self/fd/{args[0]}")
            observed.append((event, name, stat.S_IMODE(status.st_mode), status.st_uid, status.st_gid,
                             status.st_size))

    audit.append(watch)
    sync_file(spec, b"secret")
    audit.clear()

    assert len(opened) == 1
    temp, flags = opened[0]
    assert os.path.dirname(temp) == str(tmp_path)
    assert temp.startswith(temp_prefix(spec.path))
    assert temp_pid(temp) == os.getpid()
    wanted = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    assert flags & wanted == wanted
    assert [entry[0] for entry in observed] == ["os.chown", "os.chmod"], "chown must come before chmod"
    for event, name, mode, _uid, _gid, size in observed:
        assert name == temp
        assert mode & 0o077 == 0, f"temp readable by others at {event}: {mode:#o}"
        assert size == 0, f"data written before {event}"
    chmod = observed[1]
    assert (chmod[3], chmod[4]) == (NOBODY, NOBODY), "ownership must be set before the final mode"
    assert stat.S_IMODE(os.stat(spec.path).st_mode) == 0o644


@pytest.mark.timeout(30)
def test_existing_dest_is_read_without_following_symlinks(tmp_path: Path, audit: list[AuditHandler]) -> None:
    spec = FileSpec(os.path.join(tmp_path, "dest"))
    sync_file(spec, b"data")
    reads: list[int] = []
    audit.append(lambda event, args: reads.append(args[2]) if event == "open" and args[0] == spec.path
                 else None)
    assert sync_file(spec, b"data") is Outcome.UNCHANGED
    assert matches(spec, b"data")
    audit.clear()
    assert len(reads) == 2
    assert all(flags & os.O_NOFOLLOW for flags in reads)


@pytest.mark.timeout(30)
def test_cleanup_never_takes_a_temp_this_process_has_in_flight(tmp_path: Path,
                                                               audit: list[AuditHandler]) -> None:
    spec = FileSpec(os.path.join(tmp_path, "dest"))
    during: list[tuple[list[str], list[str]]] = []

    def cleanup_midway(event: str, args: tuple) -> None:  # type: ignore[type-arg]
        if event == "os.chmod" and isinstance(args[0], int) and not during:
            during.append((cleanup_stale_temp_files([spec.path]), temps_under(str(tmp_path))))

    audit.append(cleanup_midway)
    assert sync_file(spec, b"data") is Outcome.WRITTEN
    audit.clear()
    assert len(during) == 1
    removed, present = during[0]
    assert removed == []
    assert len(present) == 1 and temp_pid(present[0]) == os.getpid()
    assert read(spec.path) == b"data"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("count", [3, 20], ids=["small-batch", "large-batch"])
def test_batch_durability_order(tmp_path: Path, audit: list[AuditHandler], count: int) -> None:
    """Large batches open their filesystem handle for syncfs before writing any data (Linux only reports
    writeback errors that happen after that open); every batch fsyncs the directory after the renames."""
    events: list[str] = []

    def watch(event: str, args: tuple) -> None:  # type: ignore[type-arg]
        if event == "open" and args[0] == str(tmp_path) and args[2] & os.O_DIRECTORY:
            events.append("open-directory")
        elif event == "os.chmod" and isinstance(args[0], int):
            events.append("prepare-temp")
        elif event == "os.rename":
            events.append("rename")

    items = [(FileSpec(os.path.join(tmp_path, f"f{i}")), b"x" * i) for i in range(count)]
    audit.append(watch)
    results = sync_files(items)
    audit.clear()
    assert results == [Outcome.WRITTEN] * count
    syncfs_handle = ["open-directory"] if count > 8 else []
    assert events == [*syncfs_handle, *["prepare-temp"] * count, *["rename"] * count, "open-directory"]


def _record_opens(tmp_path: Path, events: list[str]) -> AuditHandler:
    """An audit handler noting every open of the directory ("open-directory") and of its dests for reading."""

    def watch(event: str, args: tuple) -> None:  # type: ignore[type-arg]
        if event != "open" or not isinstance(args[0], str):
            return
        if args[0] == str(tmp_path) and args[2] & os.O_DIRECTORY:
            events.append("open-directory")
        elif os.path.dirname(args[0]) == str(tmp_path) and not is_temp_name(args[0]) and not args[2] & os.O_WRONLY:
            events.append(f"read {os.path.basename(args[0])}")

    return watch


@pytest.mark.timeout(30)
@pytest.mark.parametrize("count", [1, 20], ids=["per-file-fsync", "syncfs"])
def test_replacing_a_dest_skips_the_directory_fsync_creating_one_does_not(
    tmp_path: Path, audit: list[AuditHandler], count: int
) -> None:
    """A rename over an existing dest is left to the filesystem's commit (a power loss may only bring back the
    complete version before); a rename that creates a name fsyncs its directory, so a dest never vanishes."""
    specs = [FileSpec(os.path.join(tmp_path, f"f{i}")) for i in range(count)]
    for spec in specs:
        put(spec.path, b"old")
    events: list[str] = []
    audit.append(_record_opens(tmp_path, events))
    assert sync_files([(spec, b"new") for spec in specs]) == [Outcome.WRITTEN] * count
    audit.clear()
    # syncfs' handle, opened before writing
    assert events.count("open-directory") == (1 if count > 8 else 0), events
    assert all(read(spec.path) == b"new" for spec in specs)

    events.clear()
    audit.append(_record_opens(tmp_path, events))
    assert sync_file(FileSpec(os.path.join(tmp_path, "fresh")), b"new") is Outcome.WRITTEN
    audit.clear()
    assert events[-1] == "open-directory", events


@pytest.mark.timeout(30)
def test_previous_that_differs_replaces_without_reading_the_dest(tmp_path: Path, audit: list[AuditHandler]) -> None:
    """The caller knows the dest holds other bytes: reading it back would only confirm it. The new file still
    gets the spec's mode, and the rename (over an existing dest) fsyncs no directory."""
    spec = FileSpec(os.path.join(tmp_path, "dest"), mode=0o640)
    put(spec.path, b"v1", mode=0o600)
    events: list[str] = []
    audit.append(_record_opens(tmp_path, events))
    assert sync_file(spec, b"v2", previous=b"v1") is Outcome.WRITTEN
    audit.clear()
    assert events == []
    assert read(spec.path) == b"v2" and stat.S_IMODE(os.stat(spec.path).st_mode) == 0o640
    assert temps_under(str(tmp_path)) == []


@pytest.mark.timeout(30)
def test_previous_never_skips_a_write(tmp_path: Path) -> None:
    """A hint equal to the new data is checked against the file (it may have been edited since); a wrong hint
    costs one needless replacement; none, a missing dest, and a symlink at the dest behave as without a hint."""
    spec = FileSpec(os.path.join(tmp_path, "dest"))
    put(spec.path, b"edited locally")
    assert sync_file(spec, b"v1", previous=b"v1") is Outcome.WRITTEN
    assert sync_file(spec, b"v1", previous=b"v1") is Outcome.UNCHANGED
    inode = os.stat(spec.path).st_ino
    assert sync_file(spec, b"v1", previous=b"v0") is Outcome.WRITTEN  # wrong hint: replaced, same bytes
    assert os.stat(spec.path).st_ino != inode and read(spec.path) == b"v1"
    os.unlink(spec.path)
    assert sync_file(spec, b"v2", previous=b"v1") is Outcome.WRITTEN
    target = os.path.join(tmp_path, "target")
    put(target, b"untouched")
    os.unlink(spec.path)
    os.symlink(target, spec.path)
    assert sync_files([(spec, b"v3")], previous={spec.path: b"v2"}) == [Outcome.WRITTEN]
    assert read(spec.path) == b"v3" and not os.path.islink(spec.path) and read(target) == b"untouched"


# ------------------------------------------------------------------------------------------- failures


class _Interrupted(Exception):
    pass


@pytest.mark.timeout(30)
@pytest.mark.parametrize("count", [3, 20], ids=["small-batch", "large-batch"])
def test_unexpected_exception_mid_batch_leaves_no_temp(tmp_path: Path, audit: list[AuditHandler],
                                                       count: int) -> None:
    """Anything, even an exception that is not an OSError (think KeyboardInterrupt), must not strand temps."""
    items = [(FileSpec(os.path.join(tmp_path, f"f{i}")), b"new") for i in range(count)]
    for spec, _data in items:
        put(spec.path, b"old")

    def interrupt(event: str, args: tuple) -> None:  # type: ignore[type-arg]
        if event == "os.rename":
            raise _Interrupted  # an exception in an audit hook aborts the audited call

    audit.append(interrupt)
    with pytest.raises(_Interrupted):
        sync_files(items)
    audit.clear()
    assert temps_under(str(tmp_path)) == []
    assert all(read(spec.path) == b"old" for spec, _data in items)


@pytest.mark.timeout(30)
def test_parent_that_is_a_file_fails_cleanly(tmp_path: Path) -> None:
    blocker = os.path.join(tmp_path, "blocker")
    put(blocker, b"i am a file", 0o644)
    spec = FileSpec(os.path.join(blocker, "sub", "dest"))
    with pytest.raises(FileWriteError) as caught:
        sync_file(spec, b"data")
    error = caught.value
    assert error.path == spec.path
    assert error.errno == errno.ENOTDIR
    assert error.reason == os.strerror(errno.ENOTDIR)
    assert spec.path in str(error) and "\n" not in str(error)
    assert read(blocker) == b"i am a file"
    assert temps_under(str(tmp_path)) == []


@pytest.mark.timeout(30)
def test_directory_at_dest_fails_and_is_left_alone(tmp_path: Path) -> None:
    spec = FileSpec(os.path.join(tmp_path, "dest"))
    os.mkdir(spec.path)
    put(os.path.join(spec.path, "inside"), b"keep")
    with pytest.raises(FileWriteError) as caught:
        sync_file(spec, b"data")
    assert caught.value.errno == errno.EISDIR
    assert read(os.path.join(spec.path, "inside")) == b"keep"
    assert temps_under(str(tmp_path)) == []


@pytest.mark.timeout(30)
def test_full_filesystem_keeps_the_old_file_and_no_temp(small_fs: str) -> None:
    spec = FileSpec(os.path.join(small_fs, "dest"), 0o644)
    sync_file(spec, b"old content")
    inode = os.stat(spec.path).st_ino
    with pytest.raises(FileWriteError) as caught:
        sync_file(spec, os.urandom(1024 * 1024))
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.reason == "No space left on device"
    assert read(spec.path) == b"old content"
    assert os.stat(spec.path).st_ino == inode
    assert temps_under(small_fs) == []
    assert sync_file(spec, b"new content") is Outcome.WRITTEN, "the failed temp's space must be freed"


@pytest.mark.timeout(30)
def test_read_only_filesystem_keeps_the_old_file(small_fs: str) -> None:
    spec = FileSpec(os.path.join(small_fs, "dest"), 0o644)
    sync_file(spec, b"old content")
    subprocess.run(["mount", "-o", "remount,ro", small_fs], check=True)
    with pytest.raises(FileWriteError) as caught:
        sync_file(spec, b"new content")
    assert caught.value.errno == errno.EROFS
    assert read(spec.path) == b"old content"
    assert temps_under(small_fs) == []


@pytest.mark.timeout(60)
def test_chown_refused_keeps_the_old_file_and_no_temp(shared_dir: str) -> None:
    """An unprivileged writer asked to give the file to root gets EPERM from fchown."""
    path = os.path.join(shared_dir, "dest")
    put(path, b"old content", 0o644)
    script = textwrap.dedent(
        f"""
        import json
        from livedata.files import FileSpec, FileWriteError, sync_file
        try:
            sync_file(FileSpec({path!r}, 0o644, owner=0), b"new content")
        except FileWriteError as exc:
            print(json.dumps({{"errno": exc.errno, "path": exc.path, "message": str(exc)}}))
        """
    )
    child = _run_as_nobody(script, shared_dir)
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert report["errno"] == errno.EPERM
    assert report["path"] == path
    assert read(path) == b"old content"
    assert temps_under(shared_dir) == []


def _run_as_nobody(script: str, cwd: str) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet as an unprivileged user. The venv's interpreter may live under a directory
    only root can enter (e.g. pyenv in /root); livedata.files is stdlib only, so any Python 3.9+ will do.

    The checkout may sit in such a directory too (a clone in ``mktemp -d``, mode 0700), so the child imports
    a copy of the package made readable to all, never the checkout itself."""
    with tempfile.TemporaryDirectory(prefix="livedata-package-") as copy:
        _readable_copy(os.path.dirname(os.path.abspath(livedata.files.__file__)), os.path.join(copy, "livedata"))
        os.chmod(copy, 0o755)
        env = {**os.environ, "PYTHONPATH": copy, "PYTHONDONTWRITEBYTECODE": "1"}
        for interpreter in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
            try:
                return subprocess.run([interpreter, "-c", script], user=NOBODY, group=NOBODY, extra_groups=[],
                                      cwd=cwd, env=env, capture_output=True, text=True, timeout=50)
            except (PermissionError, FileNotFoundError):
                continue
    pytest.skip("no Python interpreter that an unprivileged user may run")


def _readable_copy(source: str, destination: str) -> None:
    """Copy a package so that any user may read it, whatever the modes (umask) of the original."""
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__"))
    for directory, _, names in os.walk(destination):
        os.chmod(directory, 0o755)
        for name in names:
            os.chmod(os.path.join(directory, name), 0o644)


# ---------------------------------------------------------------------------------------------- batches


@pytest.mark.timeout(30)
@pytest.mark.parametrize("count", [3, 20], ids=["per-file-fsync", "syncfs"])
def test_batch_reports_one_bad_item_and_writes_the_rest(tmp_path: Path, count: int) -> None:
    put(os.path.join(tmp_path, "blocker"), b"x")
    unchanged = FileSpec(os.path.join(tmp_path, "same"))
    sync_file(unchanged, b"same")
    good = [(FileSpec(os.path.join(tmp_path, "d", f"f{i}"), 0o644), f"v{i}".encode()) for i in range(count)]
    bad = (FileSpec(os.path.join(tmp_path, "blocker", "f")), b"never")
    items = [*good[: count // 2], bad, (unchanged, b"same"), *good[count // 2 :]]

    results = sync_files(items)

    assert len(results) == len(items)
    for (spec, data), result in zip(items, results):
        if spec is bad[0]:
            assert isinstance(result, FileWriteError) and result.errno == errno.ENOTDIR
            assert result.path == spec.path
        elif spec is unchanged:
            assert result is Outcome.UNCHANGED
        else:
            assert result is Outcome.WRITTEN
            assert matches(spec, data)
    assert temps_under(str(tmp_path)) == []


@pytest.mark.timeout(30)
def test_batch_frees_a_failed_items_space_for_the_others(small_fs: str) -> None:
    small = [(FileSpec(os.path.join(small_fs, f"f{i}")), b"x" * 100) for i in range(12)]
    huge = (FileSpec(os.path.join(small_fs, "huge")), os.urandom(1024 * 1024))
    results = sync_files([*small[:4], huge, *small[4:]])
    assert isinstance(results[4], FileWriteError) and results[4].errno == errno.ENOSPC
    assert results[:4] + results[5:] == [Outcome.WRITTEN] * 12
    assert not os.path.exists(huge[0].path)
    assert temps_under(small_fs) == []


@pytest.mark.timeout(30)
def test_batch_rejects_the_same_path_twice(tmp_path: Path) -> None:
    spec = FileSpec(os.path.join(tmp_path, "dest"))
    with pytest.raises(ValueError, match="twice"):
        sync_files([(spec, b"a"), (FileSpec(spec.path, 0o644), b"b")])
    assert not os.path.exists(spec.path)


@pytest.mark.timeout(60)
def test_large_batch_then_all_unchanged(tmp_path: Path) -> None:
    items = [(FileSpec(os.path.join(tmp_path, str(i % 7), f"f{i}"), 0o644), os.urandom(200)) for i in range(500)]
    assert sync_files(items) == [Outcome.WRITTEN] * 500
    assert all(read(spec.path) == data for spec, data in items)
    assert sync_files(items) == [Outcome.UNCHANGED] * 500


# ------------------------------------------------------------------------------------ stale temp cleanup


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.timeout(30)
def test_cleanup_removes_only_temps_of_dead_writers_in_the_dests_directories(tmp_path: Path) -> None:
    """Any dest's: a node removed from the configuration while a killed run wrote it must not leave its temp."""
    dest = os.path.join(tmp_path, "dest")
    put(dest, b"current")
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        dead_pid = _dead_pid()
        tag = files._namespace_tag()  # made in this boot and pid namespace: the pid is checked
        dead = f"{temp_prefix(dest)}{dead_pid}.{tag}{'a' * 8}"
        own = f"{temp_prefix(dest)}{os.getpid()}.{tag}{'b' * 8}"
        alive = f"{temp_prefix(dest)}{live.pid}.{tag}{'c' * 8}"
        other_dest = f"{temp_prefix(os.path.join(tmp_path, 'other'))}{dead_pid}.{tag}{'d' * 8}"
        unrelated = os.path.join(tmp_path, ".dest.livedata-tmp.notapid")
        for path in (dead, own, alive, other_dest, unrelated):
            put(path, b"partial")

        removed = cleanup_stale_temp_files([dest, os.path.join(tmp_path, "missing-dir", "x")])

        assert sorted(removed) == sorted([dead, own, other_dest])
        assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in (dest, alive, unrelated))
        assert read(dest) == b"current"
    finally:
        live.communicate(b"", timeout=10)


@pytest.mark.timeout(30)
def test_temps_of_another_pid_namespace_are_left_until_they_are_old(tmp_path: Path) -> None:
    """Two containers sharing a volume are both pid 1: a pid from another namespace proves nothing."""
    dest = os.path.join(tmp_path, "dest")
    put(dest, b"current")
    foreign = "0" * 8 if files._namespace_tag() != "0" * 8 else "1" * 8
    in_flight = f"{temp_prefix(dest)}{os.getpid()}.{foreign}{'a' * 8}"  # our pid, but not ours
    leftover = f"{temp_prefix(dest)}{_dead_pid()}.{foreign}{'b' * 8}"
    for path in (in_flight, leftover):
        put(path, b"partial")
    old = time.time() - files.FOREIGN_GRACE - 60
    os.utime(leftover, (old, old))

    assert cleanup_stale_temp_files([dest]) == [leftover]
    assert os.path.exists(in_flight), "another namespace's write in flight is never taken"


@pytest.mark.timeout(30)
def test_temp_names_fit_for_the_longest_basename(tmp_path: Path) -> None:
    spec = FileSpec(os.path.join(tmp_path, "é" * 127))  # 254 bytes of UTF-8
    assert sync_file(spec, b"data") is Outcome.WRITTEN
    stale = f"{temp_prefix(spec.path)}{_dead_pid()}.{files._namespace_tag()}{'e' * 8}"
    assert len(os.fsencode(os.path.basename(stale))) <= 255
    put(stale, b"partial")
    assert is_temp_name(stale)
    assert cleanup_stale_temp_files([spec.path]) == [stale]


# --------------------------------------------------------------------------------------- remove and touch


@pytest.mark.timeout(30)
def test_remove_file_removes_a_symlink_not_its_target(tmp_path: Path) -> None:
    target = os.path.join(tmp_path, "target")
    put(target, b"keep")
    link = os.path.join(tmp_path, "dest")
    os.symlink(target, link)
    assert remove_file(link) is True
    assert not os.path.lexists(link)
    assert read(target) == b"keep"
    assert remove_file(link) is False
    assert remove_file(os.path.join(tmp_path, "no", "such")) is False


@pytest.mark.timeout(30)
def test_remove_file_removes_a_regular_file(tmp_path: Path) -> None:
    spec = FileSpec(os.path.join(tmp_path, "dest"))
    sync_file(spec, b"data")
    assert remove_file(spec.path) is True
    assert not os.path.lexists(spec.path)


@pytest.mark.timeout(30)
def test_touch_updates_times_without_rewriting(tmp_path: Path) -> None:
    spec = FileSpec(os.path.join(tmp_path, "dest"))
    sync_file(spec, b"data")
    old_ns = 1_000_000_000 * 1_000_000_000  # 2001
    os.utime(spec.path, ns=(old_ns, old_ns))
    inode = os.stat(spec.path).st_ino

    assert touch(spec.path) is True
    status = os.stat(spec.path)
    assert status.st_mtime_ns > old_ns and status.st_atime_ns > old_ns
    assert status.st_ino == inode
    assert read(spec.path) == b"data"


@pytest.mark.timeout(30)
def test_touch_reports_missing_and_does_not_follow_symlinks(tmp_path: Path) -> None:
    assert touch(os.path.join(tmp_path, "missing")) is False
    target = os.path.join(tmp_path, "target")
    put(target, b"keep")
    old_ns = 1_000_000_000 * 1_000_000_000
    os.utime(target, ns=(old_ns, old_ns))
    link = os.path.join(tmp_path, "dest")
    os.symlink(target, link)

    assert touch(link) is False
    assert os.stat(target).st_mtime_ns == old_ns
    assert os.path.islink(link)


# ------------------------------------------------------------------------------------- spec and errors


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"path": "relative/dest"},
        {"path": "/tmp/dir/"},
        {"path": "/tmp/a/../dest"},
        {"path": "/tmp/dest", "mode": 0o10000},
        {"path": "/tmp/dest", "owner": -1},
        {"path": "/tmp/dest", "group": -2},
    ],
)
def test_invalid_specs_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="invalid FileSpec"):
        FileSpec(**kwargs)  # type: ignore[arg-type]


@pytest.mark.timeout(10)
def test_error_message_is_one_line_naming_the_path() -> None:
    error = FileWriteError("/srv/odd\nname", "No space left on device", "writing the temp file", errno.ENOSPC)
    assert "\n" not in str(error)
    assert "odd\\nname" in str(error) and "No space left on device" in str(error)
    assert (error.path, error.reason, error.errno) == ("/srv/odd\nname", "No space left on device",
                                                       errno.ENOSPC)


@pytest.mark.timeout(10)
def test_temp_name_helpers() -> None:
    prefix = temp_prefix("/srv/data/flags.json")
    assert prefix == "/srv/data/.flags.json.livedata-tmp."
    name = f"{prefix}1234.0123456789abcdef"
    assert is_temp_name(name) and temp_pid(name) == 1234
    assert not is_temp_name("/srv/data/flags.json")
    assert not is_temp_name(f"{prefix}1234.short")
    assert temp_pid("/srv/data/flags.json") is None
