"""How hard and how long a schedule pushes, and which parts it brings in.

The suite's short form and a long soak run the same code with different :class:`Intensity` values.
"""
from __future__ import annotations

from dataclasses import dataclass, field

FEATURES = frozenset(
    {
        "acl",  # digest-protected nodes (one chunked) and credential rotation under load
        "ext4",  # dests on a loop-mounted default ext4, with power cuts at the instant of a rename
        "tiny",  # dests on a tiny tmpfs that fills up and is freed
        "hostile",  # bad envelopes, chunk-list bombs, hostile child names, an unreadable child
        "reload",  # SIGHUP reloads adding and removing nodes and trees
        "servers",  # kill, stop and pause ZooKeeper servers (the leader too), lose the quorum
        "watcher",  # SIGKILL and restart the watcher, SIGSTOP it past its session timeout
        "race",  # two writers racing on one node
    }
)
NEEDS_ROOT = frozenset({"ext4", "tiny"})


@dataclass(frozen=True)
class Intensity:
    """Length and rates of one schedule, and the bounds its invariants use."""

    duration: float = 60.0  # seconds during which operations and faults are issued
    op_interval: float = 0.12  # mean seconds between two operations
    fault_interval: float = 5.0  # mean seconds between the end of one fault and the start of the next
    fault_length: float = 3.0  # mean seconds a fault lasts
    session_timeout: float = 2.0  # the watcher's zookeeper.timeout
    converge_bound: float = 30.0  # after healing: every dest equals its node within this many seconds
    rss_bound_mb: float = 128.0  # the watcher's resident memory never goes above this
    quiet_read_bound: int = 2_000_000  # bytes the watcher may read in the quiet window after convergence
    quiet_window: float = 4.0  # seconds of that window
    features: frozenset[str] = field(default_factory=lambda: FEATURES)

    def has(self, feature: str) -> bool:
        return feature in self.features
