"""Turning the figures into the printed table, the JSON file, and the verdict on the issue's targets."""
from __future__ import annotations

import json
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from tools.benchmark.fleet import TOPOLOGIES
from tools.benchmark.scenarios import Metric

if TYPE_CHECKING:
    from typing_extensions import TypeAlias

    # scenario -> target name -> that target's rows, in the order they were measured
    Results: TypeAlias = Mapping[str, Mapping[str, Sequence[Metric]]]
    Figures: TypeAlias = Mapping[str, float | None]
    Bound: TypeAlias = Callable[[Figures, Figures | None, Mapping[str, Any]], float | None]

# The FileWatcher probe calls get_data() every 0.5 ms while waiting for a change, and sleeps overshoot a little.
_PROBE_RESOLUTION_MS = 1.0
BURST_OVER_FLOOR_MS = 5.0  # worst round of a burst scenario
_DECIMALS = {"s": 3, "ms": 2, "us": 1, "ns": 0, "MB": 1, "%": 2, "x": 1, "count": 1, "KB": 0}


@dataclass(frozen=True)
class Check:
    """One target of the issue: our figure compared with a bound that may depend on the run."""

    scenario: str
    key: str
    text: str
    bound: Bound
    at_least: bool = False

    def judge(self, results: Results, settings: Mapping[str, Any]) -> dict[str, Any] | None:
        by_target = results.get(self.scenario, {})
        if "ours" not in by_target:
            return None
        ours = _figures(by_target["ours"])
        theirs = _figures(by_target["baseplate"]) if "baseplate" in by_target else None
        value, bound = ours.get(self.key), self.bound(ours, theirs, settings)
        if value is None or bound is None:
            return None
        compare = operator.ge if self.at_least else operator.le
        return {"target": self.text, "value": value, "bound": bound, "met": bool(compare(value, bound))}


def _const(value: float) -> Bound:
    return lambda _ours, _theirs, _settings: value


def _theirs(key: str) -> Bound:
    return lambda _ours, theirs, _settings: None if theirs is None else theirs.get(key)


CHECKS = [
    Check("startup", "n5000_seconds", "startup of 5,000 nodes <= 1.0 s", _const(1.0)),
    Check("startup", "n50000_seconds", "startup of 50,000 nodes <= 8 s", _const(8.0)),
    Check("startup", "n5000_rss_mb", "memory at 5,000 nodes <= 40 MB", _const(40.0)),
    Check("startup", "n50000_rss_mb", "memory at 50,000 nodes <= 120 MB", _const(120.0)),
    # In the run's directory (here an ext4 without a journal) and on a journaled ext4; an fsync per change on both.
    Check("propagation", "p50_over_floor_ms", "propagation p50 <= floor p50 + 0.5 ms", _const(0.5)),
    Check("propagation", "p99_over_floor_ms", "propagation p99 <= floor p99 + 2 ms", _const(2.0)),
    Check("propagation", "ext4j_p50_over_floor_ms", "journaled ext4: propagation p50 <= floor + 0.5 ms", _const(0.5)),
    Check("propagation", "ext4j_p99_over_floor_ms", "journaled ext4: propagation p99 <= floor + 2 ms", _const(2.0)),
    # Not "after the last set()": ZooKeeper itself may apply a burst's last write well after it was sent, so
    # the bound is what a watcher adds to a bare DataWatch on the same server seeing the final value.
    Check(
        "burst", "final_over_floor_ms", "burst: file final <= 5 ms after a bare DataWatch saw it",
        _const(BURST_OVER_FLOOR_MS),
    ),
    Check("fanout", "spread_p99_ms", "fan-out p99 spread <= the incumbent's", _theirs("spread_p99_ms")),
    Check("fanout", "last_p99_ms", "fan-out p99 time-to-last <= the incumbent's", _theirs("last_p99_ms")),
    Check(
        "filewatcher", "interval_speedup", "check_interval get_data() >= 4x cheaper than stat-per-call",
        _const(4.0), at_least=True,
    ),
    Check(
        "filewatcher", "interval_visible_ms", "check_interval: change seen within it (+1 ms probe polling)",
        lambda _o, _t, settings: float(settings["filewatcher_interval"]) * 1000 + _PROBE_RESOLUTION_MS,
    ),
    Check(
        "filewatcher", "default_ns", "default get_data() no slower than stat-per-call",
        lambda ours, _t, _s: ours.get("reference_ns"),
    ),
    Check("idle", "cpu_percent", "idle CPU < 1% of a core", _const(1.0)),
    *(
        Check("payloads", f"kib{kib}_ratio", f"{name} JSON stored >= 5x smaller compressed", _const(5.0), at_least=True)
        for kib, name in ((100, "100 KiB"), (900, "900 KiB"), (5120, "5 MiB"))
    ),
    Check(
        "payloads", "kib900_live_zlib_p50_ms", "900 KiB JSON reaches LiveNode no slower compressed than plain",
        lambda ours, _t, _s: ours.get("kib900_live_plain_p50_ms"),
    ),
    Check("payloads", "kib5120_start_to_live_s", "5 MiB JSON from writer start to LiveNode < 1 s", _const(1.0)),
    Check(
        "trees", "tree_initial_s", "a tree's initial sync no slower than as many nodes",
        lambda ours, _t, _s: ours.get("nodes_initial_s"),
    ),
    Check("trees", "tree100_over_floor_ms", "one child of 100 changed: p50 <= floor p50 + 5 ms", _const(5.0)),
    Check("trees", "tree10000_over_floor_ms", "one child of 10,000 changed: p50 <= floor p50 + 25 ms", _const(25.0)),
    Check(
        "fleet", "standalone.n1000.plain.1KiB.last_ms", "fleet: 1,000 hosts, 1 server, last has 1 KiB <= 500 ms (p50)",
        lambda _o, _t, settings: 500.0 if settings["fleet_changes"] >= 20 else None,
    ),
    Check("fleet", "standalone.n1000.plain.expired", "fleet: 1,000 hosts, 1 server, no session lost", _const(0.0)),
    Check("fleet", "standalone.n1000.plain.1KiB.missed", "fleet: 1,000 hosts, every change reached all", _const(0.0)),
]

# The fleet scenario's rows, pivoted: one line per configuration, one column per figure (key suffix -> header).
_FLEET_PER_CHANGE = [
    ("first_ms", "first ms"), ("median_ms", "median ms"), ("p99_ms", "p99 ms"), ("last_ms", "last ms"),
    ("last_max_ms", "last max ms"), ("server_cpu_ms", "server CPU ms"), ("voters_cpu_ms", "voters CPU ms"),
    ("sent_kb", "sent KB"), ("sent_per_host", "sent/host/stored"),
    ("serialized", "serialized"), ("client_cpu_us", "bench CPU/host us"),
    ("missed", "missed"), ("stale_files", "stale files"),
]  # fmt: skip
_FLEET_PER_SIZE = [
    ("connect_s", "start to synced s"), ("busiest_pct", "on busiest server %"),
    ("idle_server_pct", "idle server CPU %"), ("idle_client_us", "idle bench CPU/host us/s"),
    ("worker_kb", "bench KB/host"),
    ("start_expired", "expired starting"), ("expired", "expired after"), ("disconnects", "disconnections after"),
]  # fmt: skip


def _figures(metrics: Sequence[Metric]) -> dict[str, float | None]:
    return {metric.key: metric.value for metric in metrics}


def verdicts(results: Results, settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    judged = (check.judge(results, settings) for check in CHECKS)
    return [verdict for verdict in judged if verdict is not None]


def to_json(results: Results, meta: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    scenarios: dict[str, Any] = {}
    for scenario, by_target in results.items():
        entry: dict[str, Any] = {"figures": {}}
        for target, metrics in by_target.items():
            for metric in metrics:
                entry["figures"].setdefault(metric.key, {"label": metric.label, "unit": metric.unit})
            entry[target] = _figures(metrics)
        scenarios[scenario] = entry
    return {"meta": dict(meta), "settings": dict(settings), "scenarios": scenarios,
            "targets": verdicts(results, settings)}  # fmt: skip


def write_json(path: str, document: Mapping[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(document, f, indent=2, allow_nan=False)
        f.write("\n")


def table(results: Results, targets: Sequence[str]) -> str:
    """Every scenario's figures, one row each; the fleet scenario's go to :func:`fleet_tables` instead."""
    header = ["scenario", "figure", *targets]
    comparing = len(targets) == 2
    if comparing:
        header.append(f"{targets[0]}/{targets[1]}")
    rows = [header]
    for scenario, by_target in results.items():
        if scenario == "fleet":
            continue
        columns = [_figures(by_target.get(name, [])) for name in targets]
        for metric in by_target.get(targets[0], []):
            values = [column.get(metric.key) for column in columns]
            row = [scenario, f"{metric.label} ({metric.unit})", *(_format(v, metric.unit) for v in values)]
            if comparing:
                row.append(_ratio(values[0], values[1]))
            rows.append(row)
    return _align(rows) if len(rows) > 1 else ""


def fleet_tables(results: Results) -> str:
    """The fleet figures as two tables: per change (one row per stored size) and per fleet size."""
    metrics = results.get("fleet", {}).get("ours", [])
    if not metrics:
        return ""
    per_change: dict[tuple[str, ...], dict[str, float | None]] = {}
    per_size: dict[tuple[str, ...], dict[str, float | None]] = {}
    units = {}
    for metric in metrics:
        parts = metric.key.split(".")
        units[parts[-1]] = metric.unit
        if len(parts) == 5:
            per_change.setdefault(tuple(parts[:4]), {})[parts[4]] = metric.value
        elif len(parts) == 4:
            per_size.setdefault(tuple(parts[:3]), {})[parts[3]] = metric.value
    skipped = next((m.value for m in metrics if m.key == "skipped"), 0)
    return "\n\n".join([
        _pivot("fleet, per change", ["servers", "hosts", "variant", "stored"], per_change, _FLEET_PER_CHANGE, units),
        _pivot("fleet, per fleet size", ["servers", "hosts", "variant"], per_size, _FLEET_PER_SIZE, units),
        f"fleet: configurations skipped (time budget or memory): {skipped:g}",
    ])  # fmt: skip


def _pivot(
    title: str,
    names: list[str],
    rows: Mapping[tuple[str, ...], Mapping[str, float | None]],
    columns: Sequence[tuple[str, str]],
    units: Mapping[str, str],
) -> str:
    shown = [(key, header) for key, header in columns if any(key in row for row in rows.values())]
    lines = [[*names, *(header for _, header in shown)]]
    for config, row in rows.items():
        topology, count, *rest = config
        cells = [TOPOLOGIES.get(topology, topology), f"{int(count[1:]):,}", *rest]
        lines.append(cells + [_format(row.get(key), units.get(key, "")) if key in row else "" for key, _ in shown])
    return f"{title}\n" + _align(lines, text_columns=len(names))


def targets_table(results: Results, settings: Mapping[str, Any]) -> str:
    rows = [["target", "ours", "bound", "met"]]
    for verdict in verdicts(results, settings):
        rows.append([verdict["target"], f"{verdict['value']:.4g}", f"{verdict['bound']:.4g}",
                     "yes" if verdict["met"] else "NO"])  # fmt: skip
    return _align(rows, text_columns=1) if len(rows) > 1 else ""


def _format(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    decimals = _DECIMALS.get(unit, 2)
    if unit == "count" and float(value).is_integer():
        decimals = 0
    return f"{value:,.{decimals}f}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "n/a"
    return f"{ours / theirs:.2f}"


def _align(rows: Sequence[Sequence[str]], text_columns: int = 2) -> str:
    """Text columns left-aligned, figures right-aligned, a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.ljust(width) if i < text_columns else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)
