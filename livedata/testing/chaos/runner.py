"""One schedule from start to verdict: build the rig, run both lanes against the checker, heal, check again."""
from __future__ import annotations

import collections
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from livedata.testing.chaos.faults import Faults
from livedata.testing.chaos.invariants import Checker, Violation, Violations, final_checks, mismatches, wait_until
from livedata.testing.chaos.layout import make_layout
from livedata.testing.chaos.observer import Observer
from livedata.testing.chaos.operations import Operations
from livedata.testing.chaos.rig import ADMIN, Rig
from livedata.testing.chaos.schedule import Step, generate
from livedata.testing.chaos.settings import Intensity

INITIAL_SYNC = 90.0  # seconds the first full sync may take on a busy machine


@dataclass
class Outcome:
    seed: int
    violation: Violation | None
    executed: list[str] = field(default_factory=list)
    operations: collections.Counter[str] = field(default_factory=collections.Counter)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    checks: int = 0
    cuts_at_rename: int = 0
    peak_rss_mb: float = 0.0
    seconds: float = 0.0
    log_tail: str = ""

    def report(self) -> str:
        """What a violation prints: the seed, the schedule so far, the invariant broken."""
        lines = [f"VIOLATION in schedule seed {self.seed} (replay: tools/chaos --seed {self.seed})",
                 f"{self.violation}", "schedule so far:"]  # fmt: skip
        lines += [f"  {line}" for line in self.executed]
        lines += ["watcher log (last warnings and errors, then last lines):"]
        lines += [f"  {line}" for line in self.log_tail.splitlines()]
        return "\n".join(lines)


class HarnessError(RuntimeError):
    """The harness itself failed (not the code under test): a lane raised something unexpected."""


def run_schedule(seed: int, intensity: Intensity, say: Callable[[str], None] = print, keep: bool = False) -> Outcome:
    layout = make_layout(intensity)
    schedule = generate(seed, intensity, layout)
    say(f"chaos: schedule seed {seed}: {len(schedule.ops)} operations and {len(schedule.faults)} faults over "
        f"{intensity.duration:g}s; features {','.join(sorted(intensity.features))}")  # fmt: skip
    started = time.monotonic()
    rig = Rig(tempfile.mkdtemp(prefix=f"livedata-chaos-{seed}-"), intensity, layout)
    violations = Violations()
    outcome = Outcome(seed, None)
    observer = Observer(rig.ensemble.hosts, ADMIN)
    operations = Operations(rig, observer, layout, violations)
    checker = Checker(rig, observer, layout, violations)
    stop = threading.Event()
    faults = Faults(rig, observer, layout, checker, operations, violations, stop)
    try:
        rig.start_servers()
        rig.mount()
        rig.write_secrets(0)
        rig.write_configs()
        observer.start()
        operations.start()
        rig.start_watcher()
        if not wait_until(lambda: not mismatches(rig, observer, layout), INITIAL_SYNC, 0.2):
            violations.report("the first sync completes", "; ".join(mismatches(rig, observer, layout)[:6]))
        checker.start()
        if not violations.broken:
            _run_lanes(schedule.ops, schedule.faults, operations, faults, violations, stop, outcome)
        stop.set()
        faults.heal()
        if not violations.broken:
            for server in rig.ensemble.servers:
                server.wait_serving(60)
            operations.repair_all()
        if not violations.broken:
            final_checks(rig, observer, layout, violations)
    finally:
        stop.set()
        checker.stop()
        outcome.violation = violations.first
        outcome.checks = violations.checks + observer.records
        outcome.operations = operations.counts
        outcome.faults = faults.counts
        outcome.cuts_at_rename = faults.cuts_at_rename
        outcome.peak_rss_mb = rig.peak_rss / 1024
        outcome.log_tail = _log_tail(rig) if outcome.violation else ""
        outcome.seconds = time.monotonic() - started
        operations.stop()
        observer.stop()
        rig.close(keep=keep)
        if keep:
            say(f"chaos: kept {rig.workdir}")
    return outcome


def _log_tail(rig: Rig) -> str:
    """The watchers' last warnings and errors (all processes of the schedule), then the last lines it logged."""
    lines = [line for log in rig.watcher_logs() for line in log.splitlines()]
    complaints = [line for line in lines if " WARNING " in line or " ERROR " in line]
    return "\n".join([*complaints[-12:], "...", *lines[-8:]])


def _run_lanes(ops: list[Step], fault_steps: list[Step], operations: Operations, faults: Faults,
               violations: Violations, stop: threading.Event, outcome: Outcome) -> None:  # fmt: skip
    start = time.monotonic()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def lane(steps: list[Step], run: Callable[[Step], None]) -> None:
        for step in steps:
            delay = start + step.at - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            if violations.broken or stop.is_set():
                return
            with lock:
                outcome.executed.append(f"[{time.monotonic() - start:7.2f}s] {step.describe()}")
            try:
                run(step)
            except BaseException as e:  # a harness bug: stop everything and say so
                errors.append(e)
                stop.set()
                return

    threads = [threading.Thread(target=lane, args=(ops, operations.run), name="chaos-ops", daemon=True),
               threading.Thread(target=lane, args=(fault_steps, faults.run), name="chaos-faults", daemon=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)
            if violations.broken:
                stop.set()
    if errors:
        raise HarnessError(f"a lane failed: {errors[0]!r}") from errors[0]
