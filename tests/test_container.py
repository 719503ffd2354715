"""The Containerfile's image, built and run against a real ZooKeeper on the host, as docs/operating.md runs it.

A node change reaches a file in a mounted volume (the dests a pod shares), with credentials from a mounted
secrets file; ``--check`` and ``--alive`` answer inside the container; SIGTERM stops it cleanly (exit 0).

No registry is needed: the base image is made from Debian's packages with mmdebstrap and imported into podman
under a fixed tag, so only the first run builds it: on a busy 2-core machine the first run took 2.5 minutes
(making the base, then the image's pip install from PyPI), a run with both cached about 12 s, and one after a
change to the code about 20 s (podman's layer cache keeps the dependencies' layer). Podman runs with the runc
runtime, the cgroupfs manager, no default ulimits and the host's network, which work inside a CI container.
The test skips, saying why, where podman (or mmdebstrap, to make the base) is missing: tools/setup installs them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kazoo.security import make_digest_acl

from livedata.testing import wait_for

REPO = Path(__file__).resolve().parent.parent
BASE_IMAGE = "localhost/livedata-test-base:bookworm"
IMAGE = "localhost/livedata-watcher:test"
CONTAINERS_CONF = """\
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""
HOST_CA = "/etc/host-ca-certificates.pem"  # where the base image holds the host's CA bundle, for pip in the build

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def host_ca_bundle() -> str | None:
    """The CA bundle this host's pip trusts, so that pip in the build gets through the same TLS proxy, if any."""
    candidates = (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt")
    for candidate in candidates:
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def make_base_image(scratch: Path) -> None:
    """Debian 12 minbase with python3 and python3-venv, from Debian's own packages: no registry involved."""
    if shutil.which("mmdebstrap") is None:
        pytest.skip(f"{BASE_IMAGE} is not built and mmdebstrap is not installed to build it (tools/setup installs it)")
    rootfs = scratch / "rootfs.tar"
    command = ["mmdebstrap", "--quiet", "--variant=minbase", "--include=python3,python3-venv"]
    changes = ["--change", 'CMD ["/bin/bash"]']
    ca = host_ca_bundle()
    if ca is not None:
        command.append(f'--customize-hook=cp {ca} "$1{HOST_CA}"')
        changes += ["--change", f"ENV PIP_CERT={HOST_CA}"]
    result = subprocess.run([*command, "bookworm", str(rootfs)], capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, f"mmdebstrap failed: {result.stderr[-2000:]}"
    podman("import", *changes, str(rootfs), BASE_IMAGE, timeout=300)
    rootfs.unlink()


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (tools/setup installs it with apt-get: podman runc mmdebstrap)")
    scratch = Path(tempfile.mkdtemp(prefix="livedata-container-"))
    conf = scratch / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    saved = os.environ.get("CONTAINERS_CONF")
    os.environ["CONTAINERS_CONF"] = str(conf)
    try:
        if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
            make_base_image(scratch)
        build_args = ["--build-arg", f"BASE={BASE_IMAGE}"]
        if os.environ.get("PIP_INDEX_URL"):
            build_args += ["--build-arg", f"PIP_INDEX_URL={os.environ['PIP_INDEX_URL']}"]
        podman("build", "--network", "host", *build_args, "-t", IMAGE, "-f", str(REPO / "Containerfile"), str(REPO),
               timeout=400)  # fmt: skip
        yield IMAGE
    finally:
        if saved is None:
            os.environ.pop("CONTAINERS_CONF", None)
        else:
            os.environ["CONTAINERS_CONF"] = saved
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def volumes() -> Iterator[Path]:
    """Host directories mounted into the container; world-writable, since the image runs as uid 10001."""
    root = Path(tempfile.mkdtemp(prefix="livedata-volumes-"))
    for name in ("dests", "secrets"):
        (root / name).mkdir()
    (root / "dests").chmod(0o777)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def container_name() -> Iterator[str]:
    name = f"livedata-test-{uuid.uuid4().hex[:12]}"
    yield name
    podman("rm", "--force", "--time", "0", name, check=False)


def exec_probe(name: str, flag: str) -> subprocess.CompletedProcess[str]:
    return podman("exec", name, "livedata-watcher", flag, "/etc/livedata/watcher.ini", check=False)


def test_the_image_mirrors_a_node_into_a_volume_answers_its_probes_and_stops_on_sigterm(
    image, volumes, container_name, zk, zk_server, zk_path
):
    zk.add_auth("digest", "myservice:s3cret")
    node = f"{zk_path}/flags"
    zk.create(node, b'{"version": 1}', acl=[make_digest_acl("myservice", "s3cret", all=True)])
    (volumes / "secrets" / "secrets.json").write_text(json.dumps(
        {"secrets": {"secret/myservice/zk": {"type": "simple", "value": "myservice:s3cret"}}}
    ))  # fmt: skip
    (volumes / "secrets" / "secrets.json").chmod(0o644)
    config = volumes / "watcher.ini"
    config.write_text(
        "[live-data]\n"
        f"zookeeper.hosts = {zk_server.address}\n"
        "zookeeper.credentials = secret/myservice/zk\n"
        "secrets.path = /etc/livedata/secrets/secrets.json\n"
        "watcher.state_dir = /run/livedata\n"
        f"nodes.flags.source = {node}\n"
        "nodes.flags.dest = /var/local/livedata/flags.json\n"
        "nodes.flags.mode = 0444\n"
    )
    config.chmod(0o644)
    podman(
        "run", "--detach", "--name", container_name, "--network", "host",
        "--volume", f"{config}:/etc/livedata/watcher.ini:ro",
        "--volume", f"{volumes / 'secrets'}:/etc/livedata/secrets:ro",
        "--volume", f"{volumes / 'dests'}:/var/local/livedata",
        image,
    )  # fmt: skip
    dest = volumes / "dests" / "flags.json"

    def logs() -> str:
        result = podman("logs", container_name, check=False)
        return result.stdout + result.stderr

    wait_for(lambda: dest.read_bytes() == b'{"version": 1}', 30, f"the first sync into the volume; logs:\n{logs()}")
    zk.set(node, b'{"version": 2}')
    wait_for(lambda: dest.read_bytes() == b'{"version": 2}', 30, "the change to reach the file in the volume")
    assert oct(dest.stat().st_mode & 0o777) == "0o444"

    check = exec_probe(container_name, "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    alive = wait_for(lambda: (lambda r: r if r.returncode == 0 else None)(exec_probe(container_name, "--alive")), 15,
                     "--alive to pass inside the container")  # fmt: skip
    assert alive.returncode == 0

    podman("stop", "--time", "10", container_name, timeout=60)  # SIGTERM, then SIGKILL after 10 s
    state = json.loads(podman("inspect", container_name, "--format", "{{json .State}}").stdout)
    assert state["ExitCode"] == 0, f"exit status {state['ExitCode']} after SIGTERM; logs:\n{logs()}"
    assert "Traceback" not in logs()
    assert dest.read_bytes() == b'{"version": 2}'  # stopping leaves the file in place
