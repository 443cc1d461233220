"""Typed settings, built once at start (from YAML, `VLMGW_*` variables and CLI flags) and
handed down. Unknown keys are errors, so a typo is reported instead of silently ignored."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


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

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


ModelSettings = Annotated[OpenAIBackendSettings, Field(discriminator="backend")]


class GatewaySettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True
    shutdown_grace: Annotated[float, Field(gt=0)] = 10.0
    max_upstream_connections: Annotated[int, Field(ge=1)] = 1000
    models: list[ModelSettings] = Field(default_factory=list)

    def model_names(self) -> list[str]:
        """Distinct model names in config order (entries sharing a name are replicas)."""
        return list(dict.fromkeys(entry.name for entry in self.models))

    def entries_for(self, name: str) -> list[ModelSettings]:
        return [entry for entry in self.models if entry.name == name]
