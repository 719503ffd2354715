"""The livedata benchmark: run with ``tools/bench`` (see ``tools/bench --help``).

It measures what people choose a sidecar on (how fast a change reaches the file, how long a big host takes to
come up, what it costs to keep running) against a real ZooKeeper, next to the floor ZooKeeper itself sets and,
on request, next to the incumbent run as a black box from its own virtualenv.
"""
