"""The registry of backend kinds: the one place that lists them.

Adding a kind: a folder vlm_gateway/backends/<kind>/ whose `__init__.py` defines
`KIND = BackendKind(settings=..., builder=...)`, plus one line in `KINDS` below
(docs/architecture.md)."""

from __future__ import annotations

import functools
import operator
from typing import Annotated, Any

import aiohttp
from pydantic import Field, create_model

from vlm_gateway.backends import blip2, openai_upstream, transformers, vllm
from vlm_gateway.backends.base import Backend, BackendKind, BuildContext
from vlm_gateway.config.settings import GatewaySettings, ModelEntry
from vlm_gateway.launch.gpu_sharing import StartSequencer

KINDS: tuple[BackendKind[Any], ...] = (
    openai_upstream.KIND,
    vllm.KIND,
    blip2.KIND,
    transformers.KIND,
)


Kinds = tuple[BackendKind[Any], ...]


@functools.cache
def settings_model(kinds: Kinds = KINDS) -> type[GatewaySettings]:
    """`GatewaySettings` whose `models:` entries are validated as the registered kinds'
    settings, chosen by their `backend:` key. Load configuration through this class."""
    entry_types = functools.reduce(operator.or_, (kind.settings for kind in kinds))
    # A union built at run time from the registry: valid for pydantic, opaque to mypy.
    entry = Annotated[entry_types, Field(discriminator="backend")]  # type: ignore[valid-type]
    return create_model(
        "GatewaySettings",
        __base__=GatewaySettings,
        __module__=__name__,
        models=(list[entry], Field(default_factory=list)),
    )


def build_backends(
    settings: GatewaySettings, client: aiohttp.ClientSession, kinds: Kinds = KINDS
) -> list[Backend]:
    """Every configured entry -> its backends (one per replica), in config order."""
    # One sequencer per app: managed processes sharing a GPU start in turn.
    context = BuildContext(settings, client, StartSequencer())
    return [
        backend
        for entry in settings.models
        for backend in _kind_of(entry, kinds).build(entry, context)
    ]


def _kind_of(entry: ModelEntry, kinds: Kinds) -> BackendKind[Any]:
    for kind in kinds:
        if isinstance(entry, kind.settings):
            return kind
    raise TypeError(f"no backend kind is registered for {type(entry).__name__}")
