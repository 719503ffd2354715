"""``tools/chaos [--seed S] [--schedules N | --minutes M]``: run seeded fault schedules; exit 1 on a violation."""
from __future__ import annotations

import argparse
import collections
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Sequence

from livedata.testing.chaos.runner import Outcome, run_schedule
from livedata.testing.chaos.settings import FEATURES, NEEDS_ROOT, Intensity


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tools/chaos", description=__doc__)
    parser.add_argument("--seed", type=int, help="the first schedule's seed (default: random); the next ones +1")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--schedules", type=int, default=1, help="how many schedules to run (default 1)")
    amount.add_argument("--minutes", type=float, help="run schedules until this many minutes have passed")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of operations per schedule")
    parser.add_argument("--op-interval", type=float, default=0.12, help="mean seconds between operations")
    parser.add_argument("--fault-interval", type=float, default=5.0, help="mean seconds between faults")
    parser.add_argument("--fault-length", type=float, default=3.0, help="mean seconds a fault lasts")
    parser.add_argument("--without", default="", help=f"comma-separated features to leave out: {sorted(FEATURES)}")
    parser.add_argument("--keep", action="store_true", help="keep each schedule's directory (logs, configs)")
    parser.add_argument("--keep-going", action="store_true", help="run the remaining schedules after a violation")
    args = parser.parse_args(argv)
    unknown = {f for f in args.without.split(",") if f} - FEATURES
    if unknown:
        parser.error(f"--without: unknown feature(s) {sorted(unknown)}; known: {sorted(FEATURES)}")
    return args


def intensity_from(args: argparse.Namespace) -> Intensity:
    features = FEATURES - {f for f in args.without.split(",") if f}
    if os.geteuid() != 0 and features & NEEDS_ROOT:
        print(f"chaos: not root: leaving out {sorted(features & NEEDS_ROOT)} (mounting needs root)", file=sys.stderr)
        features -= NEEDS_ROOT
    return Intensity(duration=args.duration, op_interval=args.op_interval, fault_interval=args.fault_interval,
                     fault_length=args.fault_length, features=frozenset(features))  # fmt: skip


def summary(outcomes: list[Outcome]) -> str:
    operations: collections.Counter[str] = collections.Counter()
    faults: collections.Counter[str] = collections.Counter()
    for outcome in outcomes:
        operations.update(outcome.operations)
        faults.update(outcome.faults)
    broken = [o for o in outcomes if o.violation]
    return "\n".join([
        f"chaos: {len(outcomes)} schedules, {sum(operations.values())} operations, {sum(faults.values())} faults, "
        f"{sum(o.checks for o in outcomes)} invariant checks, {len(broken)} violations",
        "  faults: " + ", ".join(f"{kind} {count}" for kind, count in sorted(faults.items())),
        "  operations: " + ", ".join(f"{kind} {count}" for kind, count in sorted(operations.items())),
        f"  power cuts at the instant of a rename: {sum(o.cuts_at_rename for o in outcomes)}; peak watcher RSS "
        f"{max((o.peak_rss_mb for o in outcomes), default=0):.0f} MB",
        *(f"  seed {o.seed}: {o.violation}" for o in broken),
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)  # the observer's reconnections are expected noise
    # SIGTERM unwinds like Ctrl-C, so that servers, the watcher and mounts are torn down
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    intensity = intensity_from(args)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
    outcomes: list[Outcome] = []
    while (len(outcomes) < args.schedules) if deadline is None else (time.monotonic() < deadline):
        outcome = run_schedule(seed, intensity, lambda line: print(line, flush=True), keep=args.keep)
        outcomes.append(outcome)
        if outcome.violation:
            print(outcome.report(), flush=True)
            if not args.keep_going:
                break
        else:
            print(f"chaos: seed {seed}: ok ({outcome.seconds:.0f}s, {sum(outcome.operations.values())} operations, "
                  f"{sum(outcome.faults.values())} faults, {outcome.checks} checks)", flush=True)  # fmt: skip
        seed = (seed + 1) % (1 << 32)
    print(summary(outcomes), flush=True)
    return 1 if any(o.violation for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
