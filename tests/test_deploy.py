"""The Kubernetes example in deploy/kubernetes/ and the Containerfile agree with the watcher they run.

The manifests parse; the watcher is a native sidecar whose startup probe is the first sync (``--check``) and
whose liveness probe is ``--alive``, with no readiness probe (a ZooKeeper outage must not take every pod out of
its Service); each probe runs for real against the ConfigMap's own configuration and is answered as a probe
(exit 1: nothing synced here), not refused as a usage or configuration error (exit 2); the application and the
watcher share the dests' emptyDir, and every dest of the configuration lies inside it.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from livedata.watcher import load_config

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "deploy" / "kubernetes"
WATCHER = "livedata-watcher"


def documents() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc] for path in MANIFESTS.glob("*.yaml")
    }


def only(kind: str) -> dict[str, Any]:
    found = [doc for docs in documents().values() for doc in docs if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in {MANIFESTS}, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = only("Deployment")["spec"]["template"]["spec"]
    return spec


def watcher_container() -> dict[str, Any]:
    sidecars = [c for c in pod_spec().get("initContainers", []) if c["name"] == WATCHER]
    assert len(sidecars) == 1, "the watcher runs as an init container (a native sidecar)"
    return sidecars[0]


def application_containers() -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = pod_spec()["containers"]
    assert containers and all(c["name"] != WATCHER for c in containers)
    return containers


def mount_path(container: dict[str, Any], volume: str) -> str | None:
    paths = [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] == volume]
    return paths[0] if paths else None


def test_every_manifest_parses_and_kustomize_lists_them_all():
    docs = documents()
    assert {"deployment.yaml", "configmap.yaml", "kustomization.yaml"} <= set(docs)
    kustomization = only("Kustomization")
    assert set(kustomization["resources"]) == set(docs) - {"kustomization.yaml"}
    for name, parsed in docs.items():
        assert all("apiVersion" in doc and "kind" in doc for doc in parsed), name


def test_the_watcher_is_a_native_sidecar_started_by_its_first_sync():
    watcher = watcher_container()
    assert watcher["restartPolicy"] == "Always", "restartPolicy: Always makes an init container a sidecar"
    assert watcher["startupProbe"]["exec"]["command"][:2] == [WATCHER, "--check"]
    assert watcher["livenessProbe"]["exec"]["command"][:2] == [WATCHER, "--alive"]
    assert "readinessProbe" not in watcher, "a ZooKeeper outage would take every pod out of the Service at once"
    for container in application_containers():
        for probe in ("readinessProbe", "livenessProbe"):
            command = container.get(probe, {}).get("exec", {}).get("command", [])
            assert "--check" not in command, f"{container['name']}: {probe} must not fail on stale data"


def config_path() -> str:
    watcher = watcher_container()
    (path,) = watcher["args"]
    for probe in ("startupProbe", "livenessProbe"):
        assert watcher[probe]["exec"]["command"][2:] == [path], f"{probe} checks the configuration the watcher runs"
    return str(path)


def configmap_ini(tmp_path: Path) -> Path:
    """The watcher.ini the Deployment mounts, written out where the test can load it."""
    path = config_path()
    mounts = [m for m in watcher_container()["volumeMounts"] if m["mountPath"] == path]
    assert len(mounts) == 1, f"{path} is mounted into the watcher"
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == mounts[0]["name"])
    configmap = only("ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    ini = tmp_path / "watcher.ini"
    ini.write_text(configmap["data"][mounts[0]["subPath"]])
    return ini


def watcher_help() -> str:
    result = subprocess.run([sys.executable, "-m", "livedata.watcher", "--help"], capture_output=True, text=True,
                            timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_probe_names_flags_the_watcher_has_and_runs_as_a_probe(tmp_path):
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", watcher_help()))
    assert {"--check", "--alive"} <= flags
    ini = configmap_ini(tmp_path)
    watcher = watcher_container()
    for probe in ("startupProbe", "livenessProbe"):
        command = watcher[probe]["exec"]["command"]
        assert command[0] == WATCHER
        unknown = [arg for arg in command[1:] if arg.startswith("-") and arg not in flags]
        assert not unknown, f"{probe} uses flags {WATCHER} does not have: {unknown}"
        argv = [sys.executable, "-m", "livedata.watcher", *(str(ini) if arg == config_path() else arg
                                                               for arg in command[1:])]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert result.returncode == 1, (
            f"{probe} ({shlex.join(command)}) on the ConfigMap's config: expected 1 (nothing synced on this "
            f"machine), got {result.returncode}: {result.stdout}{result.stderr}"
        )


def test_the_application_and_the_watcher_share_the_dests(tmp_path):
    config = load_config(str(configmap_ini(tmp_path)), check_dests=False)
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    watcher = watcher_container()
    shared = [
        name for name, volume in volumes.items()
        if "emptyDir" in volume and mount_path(watcher, name) is not None
        and all(mount_path(app, name) is not None for app in application_containers())
    ]  # fmt: skip
    assert len(shared) == 1, "one emptyDir mounted by the watcher and by every application container"
    inside = mount_path(watcher, shared[0])
    assert inside is not None
    for item in config.mirrored:
        assert os.path.commonpath([item.file.path, inside]) == inside, f"{item.name} is written outside {inside}"
    for app in application_containers():
        (mount,) = [m for m in app["volumeMounts"] if m["name"] == shared[0]]
        assert mount["mountPath"] == inside, "the application finds the files where the configuration puts them"
        assert mount.get("readOnly") is True, "only the watcher writes the dests"
    assert config.state_dir is not None and mount_path(watcher, "livedata-state") == config.state_dir


def test_the_containerfile_runs_the_watcher_as_a_non_root_user_on_a_chosen_base():
    text = (REPO / "Containerfile").read_text()
    assert re.search(r"^ARG BASE=\S+", text, re.MULTILINE)
    assert re.search(r"^FROM \$\{BASE\}", text, re.MULTILINE)
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and not users[-1].startswith(("0", "root")), "the image runs as a non-root user"
    assert str(watcher_container()["securityContext"]["runAsUser"]) == users[-1].split(":")[0]
    assert '"/opt/livedata/bin/livedata-watcher"' in re.findall(r"^ENTRYPOINT (.+)$", text, re.MULTILINE)[-1]
    assert re.findall(r"^CMD (.+)$", text, re.MULTILINE)[-1] == f'["{config_path()}"]'
