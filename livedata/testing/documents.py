"""Realistic documents for tests and benchmarks of large data: stdlib only, deterministic where it matters."""
from __future__ import annotations

import json
import os
import random
from typing import Any

LIMIT = 1024 * 1024 - 1024  # zookeeper.max_node_size's default


def experiments_json(size: int, seed: int = 13) -> bytes:
    """A realistic experiments config of about ``size`` bytes: thousands of entries, ids, owners, variants."""
    rng = random.Random(seed)
    entries: list[dict[str, Any]] = []
    text = b""
    while len(text) < size:
        for _ in range(500):
            n = len(entries)
            entries.append({
                "id": f"exp-{n:06d}-{rng.getrandbits(32):08x}",
                "name": f"{rng.choice(['checkout', 'search', 'feed', 'ads', 'onboarding'])}_{rng.randint(1, 10**6)}",
                "owner": f"team-{rng.randint(1, 300)}@example.com",
                "enabled": rng.random() < 0.7,
                "start_ts": 1_700_000_000 + rng.randint(0, 10**7),
                "variants": [
                    {"name": f"v{k}", "bucket": rng.randint(0, 999), "weight": round(rng.random(), 4)}
                    for k in range(rng.randint(2, 4))
                ],
                "targeting": {"country": rng.sample(["US", "DE", "FR", "JP", "BR", "IN", "GB"], 2)},
            })
        text = json.dumps({"version": 3, "experiments": entries}, indent=1).encode("utf-8")
    count = max(1, int(len(entries) * size / len(text)))  # entries are alike in size: trim to about ``size``
    return json.dumps({"version": 3, "experiments": entries[:count]}, indent=1).encode("utf-8")


def incompressible(size: int) -> bytes:
    return os.urandom(size)
