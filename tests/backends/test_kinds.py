"""The kind registry: what a kind declares (settings, builder, plan lines, image limit) is all
the rest of the gateway needs. Shown with a kind that exists only in this test, plugged in the
way a new folder's `KIND` is plugged into `KINDS`."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx
import pytest

from tests.support.images import png_data_url
from vlm_gateway.backends.base import Backend, BackendKind, BuildContext, State
from vlm_gateway.backends.kinds import KINDS, build_backends, settings_model
from vlm_gateway.config.loading import ConfigError, load_settings
from vlm_gateway.config.plan import describe_plan
from vlm_gateway.config.settings import GatewaySettings, ModelEntry
from vlm_gateway.core.errors import InvalidRequestError
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.server.app import create_app


class EchoSettings(ModelEntry):
    backend: Literal["echo"]
    reply: str = "hello"
    kind_max_images: ClassVar[int | None] = 2

    def plan_lines(self, index: int, settings: GatewaySettings) -> list[str]:
        return [f"replica {index}: backend echo, always says {self.reply!r}"]


class EchoBackend(Backend):
    kind = "echo"

    def __init__(self, name: str, reply: str) -> None:
        super().__init__(name)
        self.reply = reply

    async def start(self) -> None:
        self.set_status(State.READY)

    async def chat(self, request: ChatCompletionRequest) -> dict[str, Any]:
        message = {"role": "assistant", "content": self.reply}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return {
            "id": "echo-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [choice],
        }

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[bytes]:
        raise InvalidRequestError("echo does not stream")


def build_echo(entry: EchoSettings, context: BuildContext) -> list[Backend]:
    return [EchoBackend(entry.name, entry.reply)]


WITH_ECHO = KINDS + (BackendKind(settings=EchoSettings, builder=build_echo),)
ECHO_CONFIG = """
models:
  - {name: parrot, backend: echo, reply: squawk}
  - {name: remote, backend: openai, base_url: "http://127.0.0.1:9/v1"}
"""


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_an_unregistered_backend_names_the_registered_ones(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_settings(settings_model(), config(tmp_path, ECHO_CONFIG), environ={})
    assert "'echo'" in str(caught.value) and "'openai', 'vllm', 'blip2'" in str(caught.value)


def test_a_registered_kind_gets_validation_plan_and_image_limits(tmp_path):
    settings = load_settings(settings_model(WITH_ECHO), config(tmp_path, ECHO_CONFIG), environ={})
    assert isinstance(settings.models[0], EchoSettings)
    assert settings.models[0].reply == "squawk"
    plan = describe_plan(settings)
    assert "    replica 0: backend echo, always says 'squawk'" in plan
    assert "    images: at most 2 per request, 20 MiB and 40,000,000 pixels each" in plan
    with pytest.raises(ConfigError, match=r"models\[0\]\.rely: unknown key"):
        load_settings(
            settings_model(WITH_ECHO),
            config(tmp_path, "models: [{name: p, backend: echo, rely: x}]"),
            environ={},
        )


async def chat_with_images(client: httpx.AsyncClient, images: int) -> httpx.Response:
    parts = [
        {"type": "image_url", "image_url": {"url": png_data_url(seed=i)}} for i in range(images)
    ]
    body = {"model": "parrot", "messages": [{"role": "user", "content": parts}]}
    return await client.post("/v1/chat/completions", json=body)


def test_a_registered_kind_is_served_with_its_image_limit(tmp_path):
    overrides = {"data_dir": str(tmp_path)}
    path = config(tmp_path, ECHO_CONFIG)
    settings = load_settings(settings_model(WITH_ECHO), path, overrides, environ={})
    app = create_app(settings, build=functools.partial(build_backends, kinds=WITH_ECHO))

    async def scenario() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return [
                    await chat_with_images(client, 2),
                    await chat_with_images(client, 3),
                    await client.get("/v1/models/parrot"),
                ]

    ok, too_many, card = asyncio.run(scenario())
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "squawk"
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "too_many_images"
    assert card.json()["vlm_gateway"]["images"]["max_images"] == 2
    assert card.json()["vlm_gateway"]["replicas"][0]["backend"] == "echo"
