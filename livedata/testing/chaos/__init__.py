"""A seeded fault-schedule harness: real ZooKeeper servers, the real watcher and writer, random operations and
faults, and invariants checked by an observer that shares no code with what it checks.

One schedule is generated entirely from one seed (:mod:`.schedule`), so ``tools/chaos --seed S`` replays the same
operations and faults in the same order; timing between the real processes still varies, which is the point.
Modules, one concern each: :mod:`.settings` (intensity and features), :mod:`.layout` (which nodes, trees and
dests), :mod:`.envelope` (an independent reader and forger of the stored format), :mod:`.observer` (what each
node and tree held), :mod:`.rig` (servers, filesystems, the watcher), :mod:`.operations` and :mod:`.faults` (the
two lanes of a schedule), :mod:`.invariants` (the checks), :mod:`.runner` (one schedule) and :mod:`.cli`.
"""
from __future__ import annotations

from livedata.testing.chaos.runner import Outcome, run_schedule
from livedata.testing.chaos.settings import FEATURES, Intensity

__all__ = ["FEATURES", "Intensity", "Outcome", "run_schedule"]
