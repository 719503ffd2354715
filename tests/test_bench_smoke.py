"""The benchmark's smoke mode, end to end, so that ``tools/bench`` cannot silently rot.

Only the shape of the output is checked (a table, JSON with every scenario and a number for every figure),
never a timing: speed is the bench's business, not a pass/fail test's.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tools.benchmark.cli import SCENARIOS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "tools.benchmark", "--smoke", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, f"tools/bench failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
    return done


def assert_every_figure_is_a_number(document: dict[str, Any], scenario: str) -> None:
    entry = document["scenarios"][scenario]
    assert set(entry["ours"]) == set(entry["figures"]), f"{scenario}: figures without labels or values"
    assert entry["ours"], f"{scenario}: no figures at all"
    for key, value in entry["ours"].items():
        assert isinstance(value, (int, float)) and math.isfinite(value), f"{scenario}.{key} = {value!r}"


@pytest.mark.timeout(60)
def test_smoke_run_covers_every_scenario(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    done = run_bench("--json", str(output), timeout=55)

    document = json.loads(output.read_text())
    assert list(document["scenarios"]) == list(SCENARIOS)
    for scenario in SCENARIOS:
        assert_every_figure_is_a_number(document, scenario)
    assert document["meta"]["command"].startswith("tools/bench --smoke")
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("scenario"))
    assert header.split() == ["scenario", "figure", "ours"]
    for scenario in SCENARIOS:
        if scenario != "fleet":  # its figures are pivoted into tables of their own
            assert any(line.startswith(scenario + " ") for line in lines), f"no table row for {scenario}"
    assert "fleet, per change" in lines and "fleet, per fleet size" in lines
    fleet = document["scenarios"]["fleet"]["ours"]
    assert fleet["standalone.n20.plain.1KiB.missed"] == 0 and fleet["standalone.n20.plain.1KiB.stale_files"] == 0
    assert fleet["standalone.n20.plain.expired"] == 0


@pytest.mark.timeout(30)
def test_scenario_flag_runs_only_the_chosen_ones(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    run_bench("--scenario", "filewatcher", "--scenario", "startup", "--json", str(output), timeout=25)

    document = json.loads(output.read_text())
    assert list(document["scenarios"]) == ["startup", "filewatcher"]
    assert_every_figure_is_a_number(document, "filewatcher")


@pytest.mark.timeout(60)
def test_fleet_on_observers(tmp_path: Path) -> None:
    """The fleet scenario's other topology: simulated hosts spread over the 2 observers of a 5-server ensemble."""
    output = tmp_path / "bench.json"
    run_bench("fleet", "--fleet-sessions", "0", "--fleet-observer-sessions", "10", "--json", str(output), timeout=55)

    document = json.loads(output.read_text())
    assert list(document["scenarios"]) == ["fleet"]
    assert_every_figure_is_a_number(document, "fleet")
    fleet = document["scenarios"]["fleet"]["ours"]
    assert fleet["observers.n10.plain.1KiB.missed"] == 0 and fleet["observers.n10.plain.1KiB.stale_files"] == 0
    assert fleet["observers.n10.plain.expired"] == 0
    assert not any(key.startswith("standalone.") for key in fleet)
