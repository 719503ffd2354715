"""Dests checked before connecting, and missing dest directories created visibly with the node's owner."""
from __future__ import annotations

import logging
import os
import stat

import pytest

from livedata.destinations import create_missing_directories, dest_problem
from livedata.files import FileSpec

pytestmark = pytest.mark.timeout(10)

NOBODY = 65534


def test_only_a_directory_at_the_dest_is_a_problem(tmp_path):
    assert dest_problem(str(tmp_path)) == f"{tmp_path} is a directory; a dest must name a file"
    (tmp_path / "file").write_text("x")
    assert dest_problem(f"{tmp_path}/file/deeper/dest") is None  # a runtime failure, logged
    assert dest_problem(f"{tmp_path}/new/dir/dest") is None
    assert dest_problem(f"{tmp_path}/file") is None  # an existing file is simply replaced


def test_missing_directories_get_the_nodes_owner_and_a_log_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="livedata.destinations")
    old_umask = os.umask(0o077)
    try:
        created = create_missing_directories([
            ("a", FileSpec(f"{tmp_path}/x/y/a", 0o400, NOBODY, NOBODY)),
            ("b", FileSpec(f"{tmp_path}/x/y/b", 0o400)),  # same directory: already there
            ("c", FileSpec(f"{tmp_path}/c", 0o400)),  # existing directory: nothing to do
        ])  # fmt: skip
    finally:
        os.umask(old_umask)
    assert created == [f"{tmp_path}/x", f"{tmp_path}/x/y"]
    for path in created:
        status = os.stat(path)
        assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (NOBODY, NOBODY, 0o755)
    assert [record.getMessage() for record in caplog.records] == [
        f"nodes.a: created directory {tmp_path}/x (owner {NOBODY}, group {NOBODY}, mode 0755)",
        f"nodes.a: created directory {tmp_path}/x/y (owner {NOBODY}, group {NOBODY}, mode 0755)",
    ]


def test_a_directory_that_cannot_be_created_is_logged_not_fatal(tmp_path, caplog):
    (tmp_path / "file").write_text("x")
    assert create_missing_directories([("a", FileSpec(f"{tmp_path}/file/sub/a", 0o400))]) == []
    assert "nodes.a: cannot create" in caplog.text
