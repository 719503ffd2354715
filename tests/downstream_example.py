import json

from livedata import FileWatcher, LiveNode
from livedata.testing import StaticWatchedData, wait_for


def greeting(flags):
    """The application code under test: it reads live data through get_data(), whatever the reader."""
    return "Hello!" if flags.get_data()["friendly"] else "Hi."


def test_unit_with_static_data():
    flags = StaticWatchedData({"friendly": True})
    assert greeting(flags) == "Hello!"
    flags.set_data({"friendly": False})
    assert greeting(flags) == "Hi."


def test_through_the_watcher(livedata_client, livedata_watcher):
    livedata_client.create("/flags", b'{"friendly": false}')
    watcher = livedata_watcher(nodes={"flags": "/flags"})  # returns once the file matches the node
    flags = FileWatcher(watcher.dest("flags"), json.load)
    assert greeting(flags) == "Hi."

    livedata_client.set("/flags", b'{"friendly": true}')
    watcher.wait_synced()
    assert greeting(flags) == "Hello!"


def test_in_process_with_live_node(livedata_client):
    livedata_client.create("/flags", b'{"friendly": false}')
    with LiveNode(livedata_client, "/flags", json.load) as flags:
        assert greeting(flags) == "Hi."
        livedata_client.set("/flags", b'{"friendly": true}')
        wait_for(lambda: greeting(flags) == "Hello!", timeout=10, message="the change to arrive")
