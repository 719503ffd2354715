"""One schedule from one seed: every operation and fault, with its time and concrete arguments, decided upfront.

Nothing here looks at the running system, so the same seed always gives the same steps; what the steps meet
(which server leads, whether a read is in flight) is left to the real processes.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from livedata.testing.chaos.layout import HOSTILE_NAMES, TREE_POOL, Layout
from livedata.testing.chaos.settings import Intensity

HOSTILE_ENVELOPES = ("deep-nesting", "chunk-list-bomb", "unknown-codec", "hash-mismatch", "missing-chunk",
                     "inflate-bomb", "cut-short", "not-json")  # fmt: skip


@dataclass(frozen=True)
class Step:
    at: float  # seconds after the schedule started
    lane: str  # "op" or "fault"
    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    length: float = 0.0  # faults: seconds until healed

    def describe(self) -> str:
        args = " ".join(f"{key}={value!r}" for key, value in self.args.items())
        length = f" for {self.length:.1f}s" if self.length else ""
        return f"{self.at:7.2f}s {self.lane:5} {self.kind}{length} {args}".rstrip()


@dataclass(frozen=True)
class Schedule:
    seed: int
    ops: list[Step]
    faults: list[Step]


def generate(seed: int, intensity: Intensity, layout: Layout) -> Schedule:
    rng = random.Random(seed)
    return Schedule(seed, _ops(rng, intensity, layout), _faults(rng, intensity, layout))


def _op_weights(intensity: Intensity, layout: Layout) -> dict[str, float]:
    weights = {"set": 30.0, "toggle": 3.0, "push": 10.0, "burst": 2.0, "tree-put": 14.0, "tree-delete": 5.0,
               "tree-multi": 7.0}  # fmt: skip
    if intensity.has("race"):
        weights["race"] = 3.0
    if intensity.has("acl"):
        weights["rotate"] = 1.2
    if intensity.has("hostile"):
        weights.update({"envelope": 2.0, "repair": 1.5, "hostile-name": 1.0, "unreadable-child": 0.6})
    if intensity.has("reload"):
        weights["reload"] = 1.5
    return weights


def _ops(rng: random.Random, intensity: Intensity, layout: Layout) -> list[Step]:
    weights = _op_weights(intensity, layout)
    kinds, values = list(weights), list(weights.values())
    steps: list[Step] = []
    at = 0.5
    unreadable_done = False
    while at < intensity.duration:
        kind = rng.choices(kinds, values)[0]
        if kind == "unreadable-child":
            if unreadable_done:
                continue
            unreadable_done = True
        args = _op_args(rng, kind, layout)
        steps.append(Step(round(at, 3), "op", kind, args))
        if kind == "rotate":  # the old identity leaves the ACLs a little later, as an operator would do it
            steps.append(Step(round(at + 2.0 + rng.random() * 2, 3), "op", "rotate-end", {}))
        at += rng.expovariate(1.0 / intensity.op_interval)
    steps.sort(key=lambda step: step.at)
    return steps


def _op_args(rng: random.Random, kind: str, layout: Layout) -> dict[str, Any]:
    plain = [n.name for n in layout.of_kind("plain")]
    writable = [n.name for n in layout.of_kind("compressed", "chunked")]
    salt = rng.randrange(1 << 30)
    tree = rng.choice([t.name for t in layout.trees])
    if kind == "set":
        return {"node": rng.choice(plain), "size": rng.choice([20, 300, 300, 900, 4000]), "salt": salt}
    if kind == "toggle":
        return {"node": rng.choice([n.name for n in layout.of_kind("plain", protected=False)]), "salt": salt}
    if kind == "push":
        return {"node": rng.choice(writable), "base": rng.randrange(3), "salt": salt}
    if kind == "race":
        return {"node": rng.choice(writable), "base": rng.randrange(3), "writers": rng.choice([2, 2, 3])}
    if kind == "tree-put":
        return {"tree": tree, "child": rng.choice(TREE_POOL), "salt": salt}
    if kind == "tree-delete":
        return {"tree": tree, "child": rng.choice(TREE_POOL)}
    if kind == "tree-multi":
        names = rng.sample(TREE_POOL, rng.randint(2, 5))
        return {"tree": tree, "changes": [(name, rng.choice(["put", "put", "del"])) for name in names], "salt": salt}
    if kind == "envelope":
        return {"form": rng.choice(HOSTILE_ENVELOPES), "salt": salt}
    if kind == "hostile-name":
        return {"name": rng.choice(HOSTILE_NAMES), "salt": salt}
    if kind == "rotate":
        return {"salt": salt, "stall": rng.random() < 0.5}
    if kind == "reload":
        reloadable = [n.name for n in layout.nodes if n.reloadable] + [t.name for t in layout.trees if t.reloadable]
        return {"without": sorted(name for name in reloadable if rng.random() < 0.5), "push_first": rng.random() < 0.5}
    return {"salt": salt}


def _fault_kinds(intensity: Intensity, layout: Layout) -> dict[str, float]:
    kinds: dict[str, float] = {}
    if intensity.has("servers"):
        kinds.update({"server-kill": 3.0, "server-stop": 1.5, "server-pause": 2.0, "quorum-loss": 1.0})
    if intensity.has("watcher"):
        kinds.update({"watcher-kill": 2.0, "watcher-pause": 1.5})
    if "ext4" in layout.disks:
        kinds["power-cut"] = 2.5
    if "tiny" in layout.disks:
        kinds["disk-full"] = 1.5
    return kinds


def _faults(rng: random.Random, intensity: Intensity, layout: Layout) -> list[Step]:
    kinds = _fault_kinds(intensity, layout)
    steps: list[Step] = []
    if not kinds:
        return steps
    names, weights = list(kinds), list(kinds.values())
    ext4_nodes = [n.name for n in layout.of_kind("plain") if n.disk == "ext4"]
    at = 1.0 + rng.random() * intensity.fault_interval
    while at < intensity.duration:
        kind = rng.choices(names, weights)[0]
        length = round(0.5 + rng.expovariate(1.0 / intensity.fault_length), 2)
        args: dict[str, Any] = {}
        if kind.startswith("server") or kind == "quorum-loss":
            args["target"] = rng.choice(["leader", "follower", "any"])
        if kind == "watcher-pause":  # past the session timeout, so that the session expires
            length = round(intensity.session_timeout * (1.5 + rng.random()), 2)
        if kind == "power-cut":
            args["node"] = rng.choice(ext4_nodes)
            args["salt"] = rng.randrange(1 << 30)
            length = 0.0
        steps.append(Step(round(at, 3), "fault", kind, args, length))
        at += length + rng.expovariate(1.0 / intensity.fault_interval)
    return steps
