"""vLLM's development routes (sleep mode's /sleep, /wake_up, /is_sleeping, and the others
VLLM_SERVER_DEV_MODE mounts) are never reachable through the gateway (issue 26): a managed
"vllm" with `swap: sleep` (tests/support/fake_vllm.py, which serves those routes and logs every
request it gets) behind a real gateway; each path, on the gateway, is a 404 that reaches no
upstream, while the same vLLM answers them on its own loopback port."""

from __future__ import annotations

import sys

import httpx
import pytest

from tests.support.managed import wait_model
from tests.support.processes import REPO, GatewayProcess

FAKE_VLLM = [sys.executable, "-m", "tests.support.fake_vllm"]
DEV_PATHS = [
    "/sleep",
    "/sleep?level=1",
    "/wake_up",
    "/is_sleeping",
    "/collective_rpc",
    "/reset_prefix_cache",
    "/v1/sleep",
    "/v1/wake_up",
    "/v1/is_sleeping",
    "/m/sleep",
]
# Under a model's own card: POST there is 405, GET a model-not-found 404 (no model "m/sleep").
MODEL_PATHS = ["/v1/models/m/sleep", "/v1/models/m/wake_up", "/v1/models/m/is_sleeping"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("dev-routes")
    request_log = work / "vllm-requests.log"
    entry = {
        "name": "m",
        "backend": "vllm",
        "model": "tiny",
        "command": FAKE_VLLM,
        "swap": "sleep",
        "env": {"PYTHONPATH": str(REPO), "FAKE_VLLM_REQUEST_LOG": str(request_log)},
        "startup_timeout": 60,
        "liveness_interval": 3600,
    }
    with GatewayProcess({"data_dir": str(work / "data"), "models": [entry]}, work) as process:
        report = wait_model(process, "m", deadline_s=60)
        yield process, report["url"].removesuffix("/v1"), request_log


def reached_vllm(request_log, paths: list[str]) -> list[str]:
    routes = {path.split("?")[0] for path in paths}
    lines = request_log.read_text().splitlines()
    return [line for line in lines if line.split()[1].split("?")[0] in routes]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_dev_routes_are_404_on_the_gateway_and_reach_no_upstream(gateway, method):
    process, _, request_log = gateway
    for path in DEV_PATHS:
        answer = httpx.request(method, process.url + path, timeout=10)
        assert answer.status_code == 404, (path, answer.text)
    for path in MODEL_PATHS:
        answer = httpx.request(method, process.url + path, timeout=10)
        assert answer.status_code == (404 if method == "GET" else 405), (path, answer.text)
    assert reached_vllm(request_log, DEV_PATHS + MODEL_PATHS) == []


def test_the_managed_vllm_does_serve_them_on_its_own_loopback_port(gateway):
    """The control: the routes exist behind the gateway, so the 404s above are its doing."""
    _, vllm_root, request_log = gateway
    assert httpx.get(vllm_root + "/is_sleeping", timeout=10).json() == {"is_sleeping": False}
    assert reached_vllm(request_log, ["/is_sleeping"]) == ["GET /is_sleeping"]
