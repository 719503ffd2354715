"""``tools/bench``: parse the flags, start a private ZooKeeper, run the chosen scenarios, print and save figures."""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from kazoo.client import KazooClient

from livedata.testing.zookeeper import start_standalone
from tools.benchmark import fleet, measure, report, scenarios, targets, trees
from tools.benchmark.fleet_layouts import LAYOUTS
from tools.benchmark.scenarios import Bench, Metric
from tools.benchmark.targets import BenchError, Target

SCENARIOS = ("startup", "propagation", "burst", "fanout", "filewatcher", "idle", "payloads", trees.NAME, "fleet")
# What a run that names no scenario measures: fleet (a quarter of an hour, thousands of sessions) runs only when
# named, `tools/bench fleet`, or in --smoke at its tiny size.  Most also take --<name>-payload; fleet has
# --fleet-sizes.
UNNAMED = SCENARIOS[:-1]

# Full-run defaults (about ten minutes for ours alone) and the tiny ones of --smoke (seconds; used by the tests).
FULL = {
    "startup_nodes": [1000, 5000, 50000], "startup_payload": 200, "startup_repeats": 3,
    "propagation_changes": 400, "propagation_nodes": 1, "propagation_payload": 200,
    "burst_sets": 2000, "burst_rounds": 5, "burst_payload": 200,
    "fanout_processes": 20, "fanout_changes": 200, "fanout_payload": 200,
    "filewatcher_calls": 100_000, "filewatcher_interval": 1.0, "filewatcher_payload": 200,
    "idle_nodes": 5000, "idle_seconds": 60.0, "idle_payload": 200,
    "payloads_sizes": [100 * 1024, 900 * 1024, 5 * 1024 * 1024], "payloads_changes": 30, "payloads_writer_runs": 5,
    **trees.FULL,
    "fleet_sessions": [100, 500, 1000, 2000], "fleet_observer_sessions": [1000],
    "fleet_sizes": [1024, 100 * 1024, 900 * 1024], "fleet_changes": 20, "fleet_workers": 4,
    "fleet_layouts": ["plain"], "fleet_quiet": 3.0, "fleet_budget": 2400.0,
}  # fmt: skip
SMOKE = {
    **FULL,
    "startup_nodes": [20], "startup_repeats": 1, "propagation_changes": 10, "burst_sets": 50, "burst_rounds": 1,
    "fanout_processes": 3, "fanout_changes": 5, "filewatcher_calls": 1000, "filewatcher_interval": 0.05,
    "idle_nodes": 20, "idle_seconds": 1.0, "payloads_sizes": [100 * 1024], "payloads_changes": 3,
    "payloads_writer_runs": 1, **trees.SMOKE,
    "fleet_sessions": [20], "fleet_observer_sessions": [], "fleet_sizes": [1024], "fleet_changes": 1,
    "fleet_workers": 2, "fleet_quiet": 0.3, "fleet_budget": 60.0,
}  # fmt: skip


_SIZE_FLAGS = [
    ("startup-nodes", "N", "node counts to start with"),
    ("startup-repeats", "K", "spawns per node count; the median is reported"),
    ("propagation-changes", "K", "changes timed"),
    ("propagation-nodes", "N", "nodes the watcher holds; one of them changes"),
    ("burst-sets", "K", "back-to-back set()s per round"),
    ("burst-rounds", "K", "rounds"),
    ("fanout-processes", "N", "watcher processes on the one node"),
    ("fanout-changes", "K", "changes timed"),
    ("filewatcher-calls", "K", "get_data() calls per timed loop"),
    ("filewatcher-interval", "SECONDS", "the check_interval measured"),
    ("idle-nodes", "N", "nodes the idle watcher holds"),
    ("idle-seconds", "SECONDS", "length of the quiet window"),
    ("payloads-sizes", "BYTES", "sizes of the JSON documents"),
    ("payloads-changes", "K", "changes timed per size and stored form"),
    ("payloads-writer-runs", "K", "tools/write_node runs timed per size"),
    *trees.SIZE_FLAGS,
    *((f"{name}-payload", "BYTES", f"bytes per node ({name})") for name in UNNAMED if name != "payloads"),
    ("fleet-sessions", "N", "simulated hosts (ZooKeeper sessions) on one standalone server"),
    ("fleet-observer-sessions", "N", "simulated hosts spread over 2 observers of 3 voters (0: none)"),
    ("fleet-sizes", "BYTES", "stored bytes per change"),
    ("fleet-changes", "K", "changes timed per configuration"),
    ("fleet-workers", "N", "processes the simulated hosts are packed into"),
    ("fleet-layouts", "LAYOUT", f"how the data is stored ({', '.join(LAYOUTS)})"),
    ("fleet-quiet", "SECONDS", "idle window per fleet size (figures are net of idle)"),
    ("fleet-budget", "SECONDS", "longest the fleet scenario may run; what is left is skipped"),
]


_LISTS = ("startup_nodes", "payloads_sizes", *trees.LISTS)  # flags that take several values


def _shown(value: object) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tools/bench",
        description="Measure livedata against a private ZooKeeper (and, on request, against baseplate 2.7.1).",
        epilog="Latencies run from just before set() to the moment inotify shows the dest holding the new bytes; "
        "'floor' rows time the same set() reaching a bare kazoo DataWatch in the bench itself. The ratio column is "
        "ours/baseplate: below 1 is better, except for the FileWatcher speed-up. Absolute figures drift with the "
        "machine's load; compare within one run.",
    )
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help="same as --scenario; fleet runs only when named: tools/bench fleet")  # fmt: skip
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="run only this one (repeatable)")
    parser.add_argument("--fleet-floor", action="store_true", help="also time every fleet configuration with "
                        "bare kazoo DataWatches (no file written): what ZooKeeper and kazoo alone allow")  # fmt: skip
    parser.add_argument("--compare-baseplate", action="store_true", help="also run the incumbent, side by side")
    parser.add_argument("--json", metavar="FILE", help="also write every figure (and the run's details) here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and durations: does every scenario run?")
    parser.add_argument("--watcher-cmd", metavar="CMD", help="start our watcher with CMD CONFIG instead")
    parser.add_argument("--baseplate-venv", default=targets.BASEPLATE_VENV, help="where to install the incumbent")
    parser.add_argument("--dir", help="put the scratch directory (and so every dest file) under DIR, on the "
                        "filesystem to measure (default: the system's temp directory)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (configs, logs, dests)")
    sizes = parser.add_argument_group("sizes and durations (shown as full run / --smoke)")
    for flag, metavar, meaning in _SIZE_FLAGS:
        key = flag.replace("-", "_")
        kind = float if metavar == "SECONDS" else str if metavar == "LAYOUT" else int
        sizes.add_argument(
            f"--{flag}", type=kind, nargs="+" if key in _LISTS or isinstance(FULL[key], list) else None,
            metavar=metavar, help=f"{meaning} ({_shown(FULL[key])} / {_shown(SMOKE[key])})",
        )  # fmt: skip
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r} (choose from {', '.join(SCENARIOS)})")
    unknown = [name for name in (args.fleet_layouts or []) if name not in LAYOUTS]
    if unknown:
        parser.error(f"--fleet-layouts: unknown layout {unknown[0]!r} (choose from {', '.join(LAYOUTS)})")
    if args.scenarios:
        args.scenario = [*(args.scenario or []), *args.scenarios]
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in FULL}


def runners(args: argparse.Namespace) -> dict[str, Callable[[Bench, Target], list[Metric]]]:
    a = args
    return {
        "startup": lambda b, t: scenarios.startup(b, t, a.startup_nodes, a.startup_payload, a.startup_repeats),
        "propagation": lambda b, t: scenarios.propagation(
            b, t, a.propagation_changes, a.propagation_payload, a.propagation_nodes
        ),
        "burst": lambda b, t: scenarios.burst(b, t, a.burst_sets, a.burst_payload, a.burst_rounds),
        "fanout": lambda b, t: scenarios.fanout(b, t, a.fanout_processes, a.fanout_changes, a.fanout_payload),
        "filewatcher": lambda b, t: scenarios.file_watcher(
            b, t, a.filewatcher_calls, a.filewatcher_interval, a.filewatcher_payload
        ),
        "idle": lambda b, t: scenarios.idle(b, t, a.idle_nodes, a.idle_seconds, a.idle_payload),
        "payloads": lambda b, t: scenarios.payloads(b, t, a.payloads_sizes, a.payloads_changes, a.payloads_writer_runs),
        trees.NAME: trees.runner(a),
        "fleet": lambda b, t: fleet.fleet(b, fleet_plan(a)),
    }


def fleet_plan(args: argparse.Namespace) -> fleet.FleetPlan:
    return fleet.FleetPlan(
        sessions=[n for n in args.fleet_sessions if n > 0],
        observer_sessions=[n for n in args.fleet_observer_sessions if n > 0],
        sizes=args.fleet_sizes, changes=args.fleet_changes, workers=args.fleet_workers, layouts=args.fleet_layouts,
        floor=args.fleet_floor, quiet=args.fleet_quiet, budget=args.fleet_budget,
    )  # fmt: skip


# A fresh, quiet ext4 creates an empty file in well under 100 us; after mass deletions, several times that.
_SLOW_CREATE_US = 150


def check_filesystem(workdir: str, info: dict[str, Any]) -> None:
    """Record how fast files can be created right now, and warn when that will inflate the start-up figures."""
    info["create_us"] = cost = round(measure.create_cost_us(os.path.join(workdir, "create-probe")), 1)
    if cost > _SLOW_CREATE_US:
        print(
            f"bench: warning: creating a file takes {cost:.0f} us here right now (normally well under "
            f"{_SLOW_CREATE_US} us): many files were deleted on this filesystem in the last minutes, and start-up "
            "figures will be inflated. Wait a few minutes for a clean run.",
            file=sys.stderr,
        )


def run(args: argparse.Namespace, workdir: str) -> dict[str, dict[str, list[Metric]]]:
    chosen = [name for name in SCENARIOS if name in (args.scenario or (SCENARIOS if args.smoke else UNNAMED))]
    implementations = [targets.ours(args.watcher_cmd)]
    if args.compare_baseplate:
        implementations.append(targets.baseplate(args.baseplate_venv, workdir))
    server = start_standalone(os.path.join(workdir, "zookeeper"))
    zk = KazooClient(hosts=server.address, timeout=10.0)
    results: dict[str, dict[str, list[Metric]]] = {}
    try:
        zk.start(timeout=30)
        bench = Bench(zk, server.address, workdir)
        for name in chosen:
            passes: dict[str, list[list[Metric]]] = {}
            for number, target in _order(name, implementations):
                if name == "fleet" and target.name != "ours":
                    continue  # the simulated hosts run our Mirror; the incumbent has no such piece
                began = time.perf_counter()
                print(f"bench: {name} / {target.name}...", file=sys.stderr, flush=True)
                bench.pass_number = number
                passes.setdefault(target.name, []).append(runners(args)[name](bench, target))
                print(f"bench: {name} / {target.name} took {time.perf_counter() - began:.1f}s", file=sys.stderr)
            results[name] = {target: _mean_of(runs) for target, runs in passes.items()}
    finally:
        zk.stop()
        zk.close()
        server.stop()
    return results


# Short scenarios compared side by side, run A B B A: in single A B runs of the fan-out the implementation
# that ran first was measurably slower (ours or baseplate alike, its own DataWatch floor too), which is a
# fact about the order, not about either implementation. Each figure is the mean of its two passes.
PAIRED = ("propagation", "burst", "fanout")


def _order(name: str, implementations: Sequence[Target]) -> list[tuple[int, Target]]:
    """(pass number, target) in the order to run them: A B, or A B B A for a paired scenario."""
    order = [(0, target) for target in implementations]
    if name in PAIRED and len(implementations) > 1:
        order += [(1, target) for target in reversed(implementations)]
    return order


def _mean_of(runs: list[list[Metric]]) -> list[Metric]:
    """One list of figures from several passes of a scenario: each figure's mean (n/a if a pass has none)."""
    if len(runs) == 1:
        return runs[0]
    merged = []
    for figures in zip(*runs):
        values = [figure.value for figure in figures]
        mean = None if None in values else statistics.fmean(v for v in values if v is not None)
        merged.append(Metric(figures[0].key, figures[0].label, figures[0].unit, mean))
    return merged


def meta(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "command": shlex.join(["tools/bench", *argv]),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "baseplate": targets.BASEPLATE_VERSION if args.compare_baseplate else None,
    }


def _git(*argv: str) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    done = subprocess.run([git, "-C", targets.REPO, *argv], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # SystemExit unwinds through every ``finally``, so no watcher or ZooKeeper server outlives the bench.
    sys.exit(128 + signum)


def compile_package() -> None:
    """Write livedata's bytecode first, as ``pip install`` does on a real host.

    With PYTHONDONTWRITEBYTECODE set (as in some shells and CI jobs) every daemon the bench starts would
    otherwise compile every module from source: slower starts, and a heap grown by the compiler that the
    memory figures would charge to livedata.  compileall writes the files whatever that variable says.
    """
    import compileall

    import livedata

    compileall.compile_dir(os.path.dirname(livedata.__file__), quiet=1)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    compile_package()
    info = meta(args, argv)
    try:
        with scenarios.scratch_root(args.dir, args.keep) as workdir:
            check_filesystem(workdir, info)
            results = run(args, workdir)
    except BenchError as e:
        print(f"tools/bench: {e}", file=sys.stderr)
        return 1
    names = ["ours", "baseplate"] if args.compare_baseplate else ["ours"]
    commit = (info["commit"] or "no commit")[:12] + (" (dirty)" if info["dirty"] else "")
    print(f"livedata bench, {info['date']}, commit {commit}, {info['cpus']} CPUs, file create {info['create_us']} us")
    print(f"$ {info['command']}")
    main_table = report.table(results, names)
    if main_table:
        print(main_table)
    fleet_tables = report.fleet_tables(results)
    if fleet_tables:
        print(("\n" if main_table else "") + fleet_tables)
    verdicts = report.targets_table(results, settings_of(args))
    if verdicts:
        print("\n" + verdicts)
    if args.json:
        report.write_json(args.json, report.to_json(results, info, settings_of(args)))
    return 0
