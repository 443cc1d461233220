"""deploy/k8s as `kubectl kustomize` renders it, and what a pod would get from it: the
container's environment, its config file, its named ports."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
GATEWAY = "vlm-gateway"  # the gateway's Deployment, Service, PDB and HPA
# What a Secret the overlays reference but leave to the cluster would hold.
SECRET_SAMPLES = {
    ("vlm-gateway-postgres", "uri"): "postgresql://gateway:secret@postgres.example:5432/vlmgw",
}


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        if os.environ.get("CI"):  # scripts/test.sh installs it: never skip this in CI
            pytest.fail("kubectl is missing: scripts/test.sh should have installed it")
        pytest.skip("kubectl not installed (apt-get install kubernetes-client)")
    return path


def render(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(resources: list[dict], kind: str, name: str) -> dict[str, Any]:
    """The one resource of `kind` named `name` (a generated ConfigMap: by its name's prefix)."""
    found = [
        r
        for r in resources
        if r["kind"] == kind
        and (r["metadata"]["name"] == name or r["metadata"]["name"].startswith(name + "-"))
    ]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def container(deployment: dict, name: str) -> dict[str, Any]:
    [found] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def port_number(container_spec: dict, port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container_spec["ports"] if p.get("name") == port]
    return int(number)


def argument(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def environment(resources: list[dict], container_spec: dict) -> dict[str, str]:
    """The container's env as the kubelet would build it: values, keys of rendered ConfigMaps,
    and keys of Secrets the cluster holds (SECRET_SAMPLES stands in for them)."""
    env: dict[str, str] = {}
    for item in container_spec.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]
        if "configMapKeyRef" in ref:
            key_ref = ref["configMapKeyRef"]
            config_map = find(resources, "ConfigMap", key_ref["name"])
            env[item["name"]] = config_map["data"][key_ref["key"]]
        elif (ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]) in SECRET_SAMPLES:
            env[item["name"]] = SECRET_SAMPLES[
                ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
            ]
        else:
            assert ref["secretKeyRef"].get("optional"), f"{item['name']}: no such Secret"
    return env


def mounted_file(resources: list[dict], deployment: dict, path: str) -> str:
    """The text a container reads at `path` from a ConfigMap volume."""
    spec = deployment["spec"]["template"]["spec"]
    [gateway] = spec["containers"]
    for mount in gateway["volumeMounts"]:
        if path.startswith(mount["mountPath"].rstrip("/") + "/"):
            [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
            config_map = find(resources, "ConfigMap", volume["configMap"]["name"])
            key = path[len(mount["mountPath"].rstrip("/")) + 1 :]
            assert key in config_map["data"], f"{path}: no key {key} in the ConfigMap"
            return str(config_map["data"][key])
    raise AssertionError(f"{path} is on no ConfigMap volume")
