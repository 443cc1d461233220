"""Backend kind `openai`: forward to a remote OpenAI-compatible upstream."""

from __future__ import annotations

from vlm_gateway.backends.base import Backend, BackendKind, BuildContext
from vlm_gateway.backends.openai_upstream.backend import OpenAIUpstreamBackend
from vlm_gateway.backends.openai_upstream.settings import OpenAIBackendSettings


def build(entry: OpenAIBackendSettings, context: BuildContext) -> list[Backend]:
    return [
        OpenAIUpstreamBackend(
            entry.name,
            entry.base_url,
            context.client,
            upstream_model=entry.upstream_model,
            api_key=entry.api_key.get_secret_value() if entry.api_key else None,
            timeout=entry.timeout,
            connect_timeout=entry.connect_timeout,
            health_interval=entry.health_interval,
            max_connections=context.settings.max_upstream_connections,
            image_uuids=entry.image_uuids,
        )
    ]


KIND = BackendKind(settings=OpenAIBackendSettings, builder=build)
