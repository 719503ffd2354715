"""The pieces of ``tools/bench fleet`` that decide what is measured: documents, shares, the command line.

The scenario itself runs end to end against real servers in ``tests/test_bench_smoke.py``; these check what a
smoke run cannot see: that every stored size is exact, and that bad flags are refused before anything starts.
"""
from __future__ import annotations

import json
import subprocess
import sys
import zlib

import pytest

from tools.benchmark.fleet_layouts import LAYOUTS, document
from tools.benchmark.fleet_pool import shares
from tools.benchmark.targets import REPO

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("size", [300, 1024, 100 * 1024, 900 * 1024])
def test_documents_are_json_of_exactly_the_stored_size(size: int) -> None:
    data = document(f"/fleet/x:{size}:7", size)
    assert len(data) == size
    assert json.loads(data)["change"] == f"/fleet/x:{size}:7"


def test_each_change_has_distinct_bytes_that_compress_like_json() -> None:
    first, second = document("a:1", 100 * 1024), document("a:2", 100 * 1024)
    assert first != second
    ratio = len(first) / len(zlib.compress(first))
    assert 2 < ratio < 20, f"compresses {ratio:.1f}x: not like real JSON"


def test_a_document_too_small_for_its_tag_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        document("x" * 100, 50)


@pytest.mark.parametrize(
    ("total", "workers", "expected"),
    [(1000, 4, [250, 250, 250, 250]), (10, 4, [3, 3, 2, 2]), (3, 4, [1, 1, 1]), (1, 1, [1])],
)
def test_hosts_are_shared_evenly_and_no_worker_is_empty(total: int, workers: int, expected: list[int]) -> None:
    assert shares(total, workers) == expected


def test_the_plain_layout_stores_and_mirrors_the_document_itself() -> None:
    plain = LAYOUTS["plain"]
    data = document("p:1", 1024)
    assert plain.stored(data) == data == plain.expected(data)
    assert plain.changed("/r") == plain.watched("/r") == "/r/data"
    (node,) = plain.nodes("/r/data", "/tmp/h1")
    assert (node.source, node.file.path) == ("/r/data", "/tmp/h1")


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["flet"], "unknown scenario 'flet'"),
        (["fleet", "--fleet-layouts", "zip"], "unknown layout 'zip'"),
        (["fleet", "--fleet-sessions", "many"], "invalid int value"),
    ],
)
def test_bad_command_lines_exit_2_with_one_line(argv: list[str], complaint: str) -> None:
    done = subprocess.run([sys.executable, "-m", "tools.benchmark", *argv], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    assert complaint in done.stderr.splitlines()[-1]
    assert "Traceback" not in done.stderr
