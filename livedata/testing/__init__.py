"""Testing kit for applications that read live data, and for livedata's own tests and tools.

``livedata.testing.zookeeper`` starts throwaway real ZooKeeper servers on loopback.  Nothing here
imports kazoo or gevent until a helper that needs them is used.
"""
