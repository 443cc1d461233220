"""Settings entries -> backend objects. The one place that knows every backend kind."""

from __future__ import annotations

import httpx

from backends.base import Backend
from backends.openai_upstream import OpenAIUpstreamBackend
from gateway.settings import GatewaySettings, OpenAIBackendSettings


def build_backends(settings: GatewaySettings, client: httpx.AsyncClient) -> list[Backend]:
    return [_build(entry, client) for entry in settings.models]


def _build(entry, client: httpx.AsyncClient) -> Backend:
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
    raise TypeError(f"no backend for settings of type {type(entry).__name__}")
