"""docker-compose.yml, a design card that no CI machine runs: a compose parser must accept
it, each shape (profile) must start alone, our images must be built, not pulled, and the
gateway's data must land on the mounted volume."""

from __future__ import annotations

import fnmatch
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.dockerfile import instructions

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
VLLM_IMAGE_PREFIX = "vllm/vllm-openai:"
BLIP2_OPT_POSITIONS = 2048  # OPT's max_position_embeddings: vLLM refuses a longer max-model-len


def _compose_parser() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        if os.environ.get("CI"):  # scripts/test.sh installs it: never skip this in CI
            pytest.fail("docker-compose is missing: scripts/test.sh should have installed it")
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    return path


@pytest.fixture(scope="module")
def resolved() -> dict:
    """The file as the compose parser resolves it (anchors, defaults, paths)."""
    result = subprocess.run(
        [_compose_parser(), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def started_services(services: dict, profiles: set[str]) -> set[str]:
    """The compose spec's rule for `--profile P up`: services with no `profiles` always
    start, the others only when one of theirs is enabled. (Debian's compose 1.29 lists every
    service for `config --services` whatever --profile says, so the rule is applied here, on
    the parser's output.)"""
    return {
        name
        for name, service in services.items()
        if not service.get("profiles") or profiles & set(service["profiles"])
    }


def _source(volume: str) -> str:
    return volume.split(":")[0]


def _target(volume: str) -> str:
    return volume.split(":")[1]


def test_compose_parser_accepts_it(resolved):
    assert set(resolved["services"]) == {"gateway", "vllm-blip2", "gateway-remote"}


@pytest.mark.parametrize(
    ("profiles", "expected"),
    [
        ({"managed"}, {"gateway"}),
        ({"remote"}, {"vllm-blip2", "gateway-remote"}),
        (set(), set()),  # no shape unless one is asked for
    ],
)
def test_each_shape_starts_alone(resolved, profiles, expected):
    services = resolved["services"]
    started = started_services(services, profiles)
    assert started == expected
    for name in started:  # compose refuses a dependency outside the enabled profiles
        assert set(services[name].get("depends_on", {})) <= started, name


def test_every_image_of_ours_is_built_here(resolved):
    for name, service in resolved["services"].items():
        if service["image"].startswith(VLLM_IMAGE_PREFIX):
            continue  # the official vLLM image, pulled
        assert "build" in service, f"{name}: image {service['image']} exists nowhere to pull"
        assert (Path(service["build"]["context"]) / service["build"]["dockerfile"]).is_file()


def test_the_gateways_data_dir_is_the_mounted_volume(resolved):
    named_volumes = set(resolved.get("volumes", {}))
    for name, service in resolved["services"].items():
        if "build" not in service:
            continue
        data_dir = service["environment"]["VLMGW_DATA_DIR"]
        mounts = {_target(volume): _source(volume) for volume in service["volumes"]}
        assert mounts.get(data_dir) in named_volumes, f"{name}: {data_dir} is not a volume"


def test_the_image_itself_defaults_data_dir_to_the_volume_path(resolved):
    gateway = resolved["services"]["gateway"]
    dockerfile = Path(gateway["build"]["context"]) / gateway["build"]["dockerfile"]
    env = [args for keyword, args in instructions(dockerfile.read_text()) if keyword == "ENV"]
    assert f"VLMGW_DATA_DIR={gateway['environment']['VLMGW_DATA_DIR']}" in env


def test_the_build_context_keeps_what_the_dockerfile_copies(resolved):
    """.dockerignore leaves the virtual environments out of the context, not the sources."""
    build = resolved["services"]["gateway"]["build"]
    context = Path(build["context"])
    patterns = [
        line.strip()
        for line in (context / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    dockerfile = (context / build["dockerfile"]).read_text()
    copied = [
        source
        for keyword, args in instructions(dockerfile)
        if keyword == "COPY"
        for source in shlex.split(args)[:-1]
    ]
    assert copied
    for source in copied:
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in patterns), source
    assert any(fnmatch.fnmatch(".venv-vllm", pattern) for pattern in patterns)


def test_vllm_blip2_max_model_len_fits_the_model(resolved):
    command = resolved["services"]["vllm-blip2"]["command"]
    argv = shlex.split(command) if isinstance(command, str) else command
    assert int(argv[argv.index("--max-model-len") + 1]) <= BLIP2_OPT_POSITIONS


def test_gateway_service_runs_vllm_inside_on_a_gpu_with_health_on_ready():
    compose = yaml.safe_load(COMPOSE.read_text())
    gateway = compose["services"]["gateway"]
    dockerfile = (REPO / gateway["build"]["dockerfile"]).read_text()
    assert "FROM ${VLLM_IMAGE}" in dockerfile
    assert gateway["build"]["args"]["VLLM_IMAGE"].startswith(VLLM_IMAGE_PREFIX)
    [device] = gateway["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert "/ready" in " ".join(gateway["healthcheck"]["test"])
    mounts = " ".join(gateway["volumes"])
    assert "/config/gateway.yaml" in mounts and "/root/.cache/huggingface" in mounts
    config = gateway["volumes"][0].split(":")[0]
    assert yaml.safe_load((REPO / config).read_text())["models"][0]["backend"] == "vllm"


def test_remote_profile_runs_vllm_as_openai_upstreams():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert services["vllm-blip2"]["image"].startswith(VLLM_IMAGE_PREFIX)
    remote = services["gateway-remote"]
    assert remote["depends_on"]["vllm-blip2"]["condition"] == "service_healthy"
    config = yaml.safe_load((REPO / remote["volumes"][0].split(":")[0]).read_text())
    assert {m["backend"] for m in config["models"]} == {"openai"}
