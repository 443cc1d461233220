"""deploy/k8s: every overlay renders with `kubectl kustomize`, passes kubernetes-validate's
strict schemas (an unknown field fails), and holds together as a pod would see it: the config
in its ConfigMap loads with the gateway's own loader, the probes answer on a real gateway,
ports and names line up with the Services, shutdown fits the grace period."""

from __future__ import annotations

import copy
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import kubernetes_validate
import pytest
import yaml

from tests.deploy.k8s_support import (
    GATEWAY,
    K8S,
    REPO,
    SECRET_SAMPLES,
    argument,
    container,
    environment,
    find,
    mounted_file,
    port_number,
    render,
)
from tests.support.dockerfile import instructions
from tests.support.processes import GatewayProcess
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.config.loading import load_settings
from vlm_gateway.config.settings import GatewaySettings

OVERLAYS = ("vllm", "inference-pool", "postgres")
# The oldest Kubernetes the manifests are for (autoscaling/v2, policy/v1 and the rest are GA
# there) and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
GATEWAY_KINDS = {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS} | {
        "base": render(K8S / "base")
    }


def gateway_settings(resources: list[dict], tmp_path: Path) -> GatewaySettings:
    """What `vlm-gateway serve` in the gateway container loads: its mounted config, its env."""
    deployment = find(resources, "Deployment", GATEWAY)
    gateway = container(deployment, "gateway")
    config_path = argument(gateway["args"], "--config")
    config = tmp_path / "gateway.yaml"
    config.write_text(mounted_file(resources, deployment, config_path))
    overrides = {"host": argument(gateway["args"], "--host")}
    overrides["port"] = int(argument(gateway["args"], "--port"))
    return load_settings(settings_model(), config, overrides, environment(resources, gateway))


@pytest.mark.parametrize("name", ("base", *OVERLAYS))
def test_renders_and_validates_strictly(rendered, name):
    resources = rendered[name]
    kinds = {resource["kind"] for resource in resources}
    assert kinds >= GATEWAY_KINDS | {"HorizontalPodAutoscaler"}
    for resource in resources:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(resource, version, strict=True)


def test_a_typo_in_a_manifest_fails_validation(rendered):
    """The check above would catch a misspelt field: strict schemas reject unknown keys."""
    deployment = copy.deepcopy(find(rendered["vllm"], "Deployment", GATEWAY))
    gateway = container(deployment, "gateway")
    gateway["livenesProbe"] = gateway.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("name", ("base", *OVERLAYS))
def test_the_configmap_loads_with_the_gateways_loader(rendered, name, tmp_path):
    settings = gateway_settings(rendered[name], tmp_path)
    # No models would make `serve` load BLIP-2 in-process, which the gateway pod cannot.
    assert settings.models
    # Readiness is the whole pod's: one model down must not empty the Service.
    assert settings.ready_policy == "any"
    gateway = container(find(rendered[name], "Deployment", GATEWAY), "gateway")
    assert settings.data_dir == environment(rendered[name], gateway)["VLMGW_DATA_DIR"]
    data_mounts = {mount["mountPath"] for mount in gateway["volumeMounts"]}
    assert settings.data_dir in data_mounts  # batch files on a volume, not the image's layers


@pytest.mark.parametrize("name", ("base", *OVERLAYS))
def test_image_pool_is_sized_to_the_pod_not_the_node(rendered, name, tmp_path):
    """Unset, `images.prepare_workers` is one process per core the container sees: every core
    of the node, dozens on a GPU node, past the pod's memory limit."""
    settings = gateway_settings(rendered[name], tmp_path)
    gateway = container(find(rendered[name], "Deployment", GATEWAY), "gateway")
    cpu = str(gateway["resources"]["requests"]["cpu"])
    cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    assert settings.images.prepare_workers is not None
    assert 1 <= settings.images.prepare_workers <= max(1, round(cores))


def test_postgres_overlay_puts_the_batch_store_in_postgres(rendered, tmp_path):
    settings = gateway_settings(rendered["postgres"], tmp_path)
    assert settings.batch.store == SECRET_SAMPLES["vlm-gateway-postgres", "uri"]
    deployment = find(rendered["postgres"], "Deployment", GATEWAY)
    hpa = find(rendered["postgres"], "HorizontalPodAutoscaler", GATEWAY)
    assert deployment["spec"]["replicas"] >= 3 and hpa["spec"]["minReplicas"] >= 3


@pytest.mark.parametrize("name", ("base", *OVERLAYS))
def test_ports_line_up(rendered, name, tmp_path):
    resources = rendered[name]
    deployment = find(resources, "Deployment", GATEWAY)
    gateway = container(deployment, "gateway")
    settings = gateway_settings(resources, tmp_path)
    service = find(resources, "Service", GATEWAY)
    [service_port] = service["spec"]["ports"]
    assert port_number(gateway, service_port["targetPort"]) == settings.port
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert port_number(gateway, gateway[probe]["httpGet"]["port"]) == settings.port, probe
    pdb = find(resources, "PodDisruptionBudget", GATEWAY)
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = find(resources, "HorizontalPodAutoscaler", GATEWAY)
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "cpu" in gateway["resources"]["requests"]  # the HPA's utilisation is of the request


@pytest.mark.parametrize("name", ("base", *OVERLAYS))
def test_shutdown_fits_the_grace_period(rendered, name, tmp_path):
    """SIGTERM comes after preStop; the gateway then drains for up to shutdown_grace and must
    be done before the kubelet's SIGKILL."""
    deployment = find(rendered[name], "Deployment", GATEWAY)
    gateway = container(deployment, "gateway")
    settings = gateway_settings(rendered[name], tmp_path)
    command = gateway["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(command[1]) + settings.shutdown_grace


def test_gateway_container_runs_the_image_as_the_dockerfile_builds_it(rendered):
    dockerfile = (REPO / "docker" / "gateway.Dockerfile").read_text()
    cmd = [args for keyword, args in instructions(dockerfile) if keyword == "CMD"][-1]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    image = compose["x-gateway-image"]
    for name in ("base", *OVERLAYS):
        gateway = container(find(rendered[name], "Deployment", GATEWAY), "gateway")
        assert gateway["image"] == image  # the image docker/gateway.Dockerfile builds
        assert gateway["args"] == yaml.safe_load(cmd)  # exec form: a JSON list
        assert not any(key.startswith("nvidia.com/") for key in gateway["resources"]["requests"])


@pytest.mark.parametrize("name", ("base", *OVERLAYS))
def test_every_pod_runs_as_non_root(rendered, name):
    for deployment in (r for r in rendered[name] if r["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for spec in pod["containers"]:
            assert spec["securityContext"]["allowPrivilegeEscalation"] is False
            assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_vllm_overlay_has_one_gpu_vllm_per_model_behind_its_upstream(rendered, tmp_path):
    """Each `backend: openai` upstream is a Service in the overlay, on the port its vLLM
    listens on, serving the model name the gateway asks for, on a GPU of its own."""
    resources = rendered["vllm"]
    settings = gateway_settings(resources, tmp_path)
    assert {entry.backend for entry in settings.models} == {"openai"}
    for entry in settings.models:
        url = urlsplit(entry.base_url)
        service = find(resources, "Service", str(url.hostname))
        [port] = service["spec"]["ports"]
        assert port["port"] == url.port
        [deployment] = [
            r
            for r in resources
            if r["kind"] == "Deployment"
            and service["spec"]["selector"].items()
            <= r["spec"]["template"]["metadata"]["labels"].items()
        ]
        vllm = container(deployment, "vllm")
        assert port_number(vllm, port["targetPort"]) == int(argument(vllm["args"], "--port"))
        assert argument(vllm["args"], "--served-model-name") == entry.upstream_model
        assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert vllm["readinessProbe"]["httpGet"]["path"] == "/health"  # vLLM's route


@pytest.mark.parametrize("name", ("vllm", "inference-pool"))
def test_probes_answer_on_a_real_gateway(rendered, name, tmp_path):
    """The rendered config served by a real `vlm-gateway serve`, with the container's env (its
    data dir moved here): liveness answers 200, readiness answers for the configured models
    (503 here: their upstreams are cluster names that do not resolve on this machine)."""
    resources = rendered[name]
    gateway = container(find(resources, "Deployment", GATEWAY), "gateway")
    settings = gateway_settings(resources, tmp_path)
    config = yaml.safe_load(
        mounted_file(
            resources, find(resources, "Deployment", GATEWAY), argument(gateway["args"], "--config")
        )
    )
    env = environment(resources, gateway) | {"VLMGW_DATA_DIR": str(tmp_path / "data")}
    env["HOME"] = str(tmp_path)
    with GatewayProcess(config, tmp_path, env).start(wait_ready=False) as running:
        live = httpx.get(running.url + gateway["livenessProbe"]["httpGet"]["path"], timeout=10)
        assert live.status_code == 200, live.text
        ready = httpx.get(running.url + gateway["readinessProbe"]["httpGet"]["path"], timeout=10)
        assert ready.status_code in (200, 503), ready.text
        assert set(ready.json()["models"]) == set(settings.model_names())
        assert ready.json()["policy"] == "any"
    assert "Traceback" not in running.log(), running.log()
