"""Which models a caller may use (a key's `models` list, docs/security.md): every route that
takes a model asks here, so the rule lives in one place.

A model the caller may not use is answered exactly as one that does not exist: 404
`model_not_found`, listing only the models the caller may use, so a key learns nothing about
the others."""

from __future__ import annotations

from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.core.errors import ModelNotFoundError
from vlm_gateway.server.door.keys import Caller


def allowed_models(caller: Caller, registry: BackendRegistry) -> list[str]:
    """The configured models this caller may use, in config order."""
    return [name for name in registry.names() if caller.may_call(name)]


def require_model(caller: Caller, registry: BackendRegistry, model: str) -> None:
    """404 `model_not_found` unless the model is configured and the caller may use it."""
    if not registry.replicas(model) or not caller.may_call(model):
        raise ModelNotFoundError(model, allowed_models(caller, registry))
