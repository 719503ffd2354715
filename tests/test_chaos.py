"""The short form of tools/chaos: a few fixed seeds and one random seed (printed in its test id), each a short
schedule of operations and faults against a real ensemble, the real watcher and the real writer.

A failing seed prints the schedule so far and the invariant broken; replay it with the suite's intensity:
``tools/chaos --seed S --duration 15 --op-interval 0.15 --fault-interval 2.5 --fault-length 2``.
The harness's own parts are checked first: a seed always gives the same schedule, and the observer's
independent decoder agrees with the writer's encoder.
"""
from __future__ import annotations

import os
import random

import pytest

from livedata.payload import encode
from livedata.testing.chaos import FEATURES, Intensity, run_schedule
from livedata.testing.chaos import envelope as oracle
from livedata.testing.chaos.layout import make_layout
from livedata.testing.chaos.observer import Observer
from livedata.testing.chaos.schedule import generate
from livedata.testing.chaos.settings import NEEDS_ROOT

# Seeds that broke an invariant before the fixes they found (each fails on the code before them).
FIXED_SEEDS = [3, 7, 11]
RANDOM_SEED = random.SystemRandom().randrange(1 << 32)

SHORT = Intensity(
    duration=15.0,
    op_interval=0.15,
    fault_interval=2.5,
    fault_length=2.0,
    features=FEATURES if os.geteuid() == 0 else FEATURES - NEEDS_ROOT,
)


def test_a_seed_always_gives_the_same_schedule() -> None:
    layout = make_layout(SHORT)
    first, again = generate(1234, SHORT, layout), generate(1234, SHORT, layout)
    assert [s.describe() for s in first.ops + first.faults] == [s.describe() for s in again.ops + again.faults]
    assert first.ops != generate(1235, SHORT, layout).ops


@pytest.mark.parametrize("mode", ["auto", "always"])
@pytest.mark.parametrize("size", [0, 100, 20_000, 200_000])
def test_the_observers_decoder_agrees_with_the_writers_encoder(mode: str, size: int) -> None:
    data = random.Random(size).randbytes(size // 2) + b"text " * (size // 10)
    stored = encode(data, mode, 16384)
    assert oracle.decode(stored.node_data, stored.chunks.get, 1 << 20) == data


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("seed", [*FIXED_SEEDS, RANDOM_SEED], ids=[*map(str, FIXED_SEEDS), f"random-{RANDOM_SEED}"])
def test_a_short_schedule_keeps_every_invariant(seed: int) -> None:
    outcome = run_schedule(seed, SHORT)
    assert outcome.violation is None, outcome.report()


def test_the_observer_tells_zookeeper_losing_writes_from_a_watcher_going_back() -> None:
    """ZooKeeper 3.8.0 can lose acknowledged writes (seed 11: a server still syncing won the next election):
    the node's own version going back is the ensemble's fault, which the checker must not pin on the watcher."""
    observer = Observer("127.0.0.1:1", "admin:secret")  # never started: only its bookkeeping is exercised
    observer._note_stamp("c0", (0x100000013, 1, 0x100000018))
    observer._note_stamp("c0", (0x100000013, 2, 0x200000005))
    observer._note_stamp("c0", (0x100000013, 2, 0x200000005))  # read again: no news
    observer._note_stamp("c0", (0x300000001, 0, 0x300000001))  # deleted and created again: a new history
    observer._note_stamp("c0", (0x300000001, 1, 0x300000004))
    assert observer.rolled_back("c0") is None
    observer._note_stamp("c0", (0x300000001, 1, 0x400000002))  # version 1 again, another write: one was lost
    assert observer.rolled_back("c0") == "version 1 at mzxid 0x300000004, then version 1 at mzxid 0x400000002"
    observer._note_stamp("p0", (0x100000006, 2, 0x20000000D))
    observer._note_stamp("p0", (0x100000006, 1, 0x100000006))  # an older version back
    assert observer.rolled_back("p0") is not None
