"""Typed settings, built once at start (from YAML, `VLMGW_*` variables and CLI flags) and
handed down. Unknown keys are errors, so a typo is reported instead of silently ignored."""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from vlm_gateway.launch.gpu_sharing import GpuClaim, split_gpu_memory
from vlm_gateway.launch.vllm_command import GATEWAY_OWNED_FLAGS

from vlm_gateway.images.settings import ImageSettings, ModelImageLimits, SecuritySettings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenAIBackendSettings(_Section):
    """A remote OpenAI-compatible upstream, e.g. `vllm serve` on another machine."""

    name: Annotated[str, Field(min_length=1)]
    backend: Literal["openai"]
    base_url: str
    upstream_model: str | None = None
    api_key: SecretStr | None = None
    timeout: Annotated[float, Field(gt=0)] = 600.0
    connect_timeout: Annotated[float, Field(gt=0)] = 5.0
    health_interval: Annotated[float, Field(gt=0)] = 5.0
    images: ModelImageLimits | None = None  # overrides of the top-level `images:` limits

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class VllmBackendSettings(_Section):
    """`vllm serve` launched and supervised by the gateway (docs/managed-vllm.md)."""

    name: Annotated[str, Field(min_length=1)]
    backend: Literal["vllm"]
    model: Annotated[str, Field(min_length=1)]  # hub id or local directory
    command: Annotated[list[str], Field(min_length=1)] = ["vllm"]
    max_model_len: Literal["auto"] | Annotated[int, Field(gt=0)] | None = None
    max_model_len_cap: Annotated[int, Field(gt=0)] | None = None  # for `auto`
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = None
    gpus: list[Annotated[int, Field(ge=0)]] | None = None
    chat_template: str | None = None
    enable_prefix_caching: bool = True
    replicas: Annotated[int, Field(ge=1)] = 1
    port: Annotated[int, Field(gt=0, le=65535)] | None = None  # replica i gets port + i
    startup_timeout: Annotated[float, Field(gt=0)] = 900.0
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    log_dir: str | None = None  # default: <data_dir>/logs
    timeout: Annotated[float, Field(gt=0)] = 600.0
    liveness_interval: Annotated[float, Field(gt=0)] = 10.0
    liveness_timeout: Annotated[float, Field(gt=0)] = 30.0
    liveness_failures: Annotated[int, Field(ge=1)] = 3
    probe_image: bool = True  # liveness chat carries a tiny image (vision models)
    restart_backoff: Annotated[float, Field(gt=0)] = 1.0
    restart_backoff_max: Annotated[float, Field(gt=0)] = 60.0
    max_restarts: Annotated[int, Field(ge=0)] = 10  # failed restarts in a row, then `failed`
    stop_grace: Annotated[float, Field(gt=0)] = 10.0
    images: ModelImageLimits | None = None  # overrides of the top-level `images:` limits

    @model_validator(mode="after")
    def _no_flags_the_gateway_sets(self) -> VllmBackendSettings:
        owned = set(GATEWAY_OWNED_FLAGS) | ({"--max-model-len"} if self.max_model_len else set())
        for arg in self.extra_args:
            if arg.split("=", 1)[0] in owned:
                raise ValueError(f"extra_args: {arg.split('=', 1)[0]} is set by the gateway; "
                                 "use the entry's own key (name, port, max_model_len) instead")
        return self

    def gpu_claims(self) -> list[GpuClaim]:
        """One claim per replica process, for splitting shared GPUs (vlm_gateway.launch.gpu_sharing)."""
        gpus = tuple(self.gpus) if self.gpus is not None else None
        return [GpuClaim((self.name, index), gpus, self.gpu_memory_utilization)
                for index in range(self.replicas)]


class Blip2BackendSettings(_Section):
    """BLIP-2 run in the gateway's own process with transformers (docs/blip2.md)."""

    name: Annotated[str, Field(min_length=1)]
    backend: Literal["blip2"]
    model: Annotated[str, Field(min_length=1)] = "Salesforce/blip2-opt-2.7b"  # hub id or dir
    device: str = "auto"  # auto (cuda when available, else cpu), cpu, cuda, cuda:N
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: fp16 on cuda
    max_batch_size: Annotated[int, Field(ge=1, le=256)] = 16
    batch_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 5.0
    context_length: Annotated[int, Field(gt=0)] | None = None  # default: the model's own
    default_max_tokens: Annotated[int, Field(ge=1)] = 64
    images: ModelImageLimits | None = None  # overrides of the top-level `images:` limits

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N")


ModelSettings = Annotated[
    OpenAIBackendSettings | VllmBackendSettings | Blip2BackendSettings,
    Field(discriminator="backend"),
]


class BatchSettings(_Section):
    """The Batch API's runner (docs/batch.md). Live traffic goes first: per model, batch
    requests only fill what live requests leave of `concurrency_per_model`."""

    concurrency_per_model: Annotated[int, Field(ge=1)] = 32
    max_requests_per_batch: Annotated[int, Field(ge=1)] = 50_000
    max_file_bytes: Annotated[int, Field(ge=1)] = 200 * 1024 * 1024


def _default_data_dir() -> str:
    home_share = os.path.join(os.path.expanduser("~"), ".local", "share")
    base = os.environ.get("XDG_DATA_HOME") or home_share
    return os.path.join(base, "vlm-gateway")


class GatewaySettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True
    shutdown_grace: Annotated[float, Field(gt=0)] = 10.0
    max_upstream_connections: Annotated[int, Field(ge=1)] = 1000
    models: list[ModelSettings] = Field(default_factory=list)
    # Batch API files and their SQLite store (default: $XDG_DATA_HOME/vlm-gateway).
    data_dir: str = Field(default_factory=_default_data_dir)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)

    @model_validator(mode="after")
    def _gpu_memory_fits(self) -> GatewaySettings:
        self.vllm_gpu_shares()  # raises ValueError naming the over-committed GPU
        return self

    def vllm_gpu_shares(self) -> dict:
        """(name, replica) -> gpu_memory_utilization for every managed vLLM process."""
        claims = [claim for entry in self.models if isinstance(entry, VllmBackendSettings)
                  for claim in entry.gpu_claims()]
        return split_gpu_memory(claims)

    def model_names(self) -> list[str]:
        """Distinct model names in config order (entries sharing a name are replicas)."""
        return list(dict.fromkeys(entry.name for entry in self.models))

    def entries_for(self, name: str) -> list[ModelSettings]:
        return [entry for entry in self.models if entry.name == name]
