"""gevent's monkey-patching for the daemon: done first, and with only what the daemon needs.

Two things a plain ``monkey.patch_all()`` does cost the watcher memory for nothing:

* Every patch step looks for gevent plugins among the entry points of every installed distribution. That
  imports ``importlib.metadata`` with email, zipfile, pathlib, calendar and more, and parses the metadata
  of each installed package: about 2 MB resident for the daemon's whole life (measured at 5,000 nodes,
  41.3 -> 39.4 MB). The only plugin gevent itself registers warns about patching ``signal`` without
  ``os``, which never applies here, and the daemon's environment installs no other plugin, so the steps
  notify zope.event subscribers (gevent's own in-process mechanism) without the lookup.
* ``subprocess`` is not patched: only ``on_change`` hooks start processes, and they use
  ``gevent.subprocess`` directly, imported on the first run.
"""
from __future__ import annotations


def patch_for_daemon() -> None:
    """Monkey-patch the process for the watcher; call before anything imports socket users (kazoo...)."""
    from gevent import events, monkey

    lookup = events.notify_and_call_entry_points
    events.notify_and_call_entry_points = events.notify  # read by gevent at each patch step
    try:
        monkey.patch_all(subprocess=False)
    finally:
        events.notify_and_call_entry_points = lookup
