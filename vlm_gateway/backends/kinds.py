"""Settings entries -> backend objects. The one place that knows every backend kind."""

from __future__ import annotations

import aiohttp

from vlm_gateway.backends.base import Backend
from vlm_gateway.backends.blip2.backend import Blip2Backend
from vlm_gateway.backends.openai_upstream.backend import OpenAIUpstreamBackend
from vlm_gateway.backends.vllm.processes import build_managed_vllm
from vlm_gateway.config.settings import (
    Blip2BackendSettings, GatewaySettings, OpenAIBackendSettings, VllmBackendSettings,
)
from vlm_gateway.launch.gpu_sharing import StartSequencer


def build_backends(settings: GatewaySettings, client: aiohttp.ClientSession) -> list[Backend]:
    sequencer = StartSequencer()  # one per app: managed processes sharing a GPU start in turn
    backends: list[Backend] = []
    for entry in settings.models:
        if isinstance(entry, VllmBackendSettings):  # one backend per replica process
            backends += build_managed_vllm(settings, entry, client, sequencer)
        else:
            backends.append(_build(entry, client))
    return backends


def _build(entry, client: aiohttp.ClientSession) -> Backend:
    if isinstance(entry, OpenAIBackendSettings):
        return OpenAIUpstreamBackend(
            entry.name,
            entry.base_url,
            client,
            upstream_model=entry.upstream_model,
            api_key=entry.api_key.get_secret_value() if entry.api_key else None,
            timeout=entry.timeout,
            connect_timeout=entry.connect_timeout,
            health_interval=entry.health_interval,
        )
    if isinstance(entry, Blip2BackendSettings):
        return Blip2Backend(
            entry.name,
            entry.model,
            device=entry.device,
            dtype=entry.dtype,
            max_batch_size=entry.max_batch_size,
            batch_wait_ms=entry.batch_wait_ms,
            context_length=entry.context_length,
            default_max_tokens=entry.default_max_tokens,
        )
    raise TypeError(f"no backend for settings of type {type(entry).__name__}")
