"""Backend kind `vllm`: `vllm serve` processes the gateway launches and supervises itself."""

from __future__ import annotations

from vlm_gateway.backends.base import Backend, BackendKind, BuildContext
from vlm_gateway.backends.vllm.processes import build_managed_vllm
from vlm_gateway.backends.vllm.settings import VllmBackendSettings


def build(entry: VllmBackendSettings, context: BuildContext) -> list[Backend]:
    return list(build_managed_vllm(entry, context))  # one backend per replica process


KIND = BackendKind(settings=VllmBackendSettings, builder=build)
