"""`backend: openai` entries: a remote OpenAI-compatible upstream."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator

from vlm_gateway.config.settings import GatewaySettings, ModelEntry


class OpenAIBackendSettings(ModelEntry):
    """A remote OpenAI-compatible upstream, e.g. `vllm serve` on another machine."""

    backend: Literal["openai"]
    base_url: str
    upstream_model: str | None = None
    api_key: SecretStr | None = None
    timeout: Annotated[float, Field(gt=0)] = 600.0
    connect_timeout: Annotated[float, Field(gt=0)] = 5.0
    health_interval: Annotated[float, Field(gt=0)] = 5.0
    # The upstream is vLLM: send each image's digest as its `uuid`, so vLLM's caches hit
    # (openai_upstream/image_ids.py). Off by default: other servers may refuse the field.
    image_uuids: bool = False

    # Forwarded as they are: a remote vLLM honours them, another server answers for itself.
    kind_takes_media_kwargs: ClassVar[bool] = True
    kind_loads_on_demand: ClassVar[bool] = False  # its server holds the model, not the gateway

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    def sends_image_ids(self) -> bool:
        return self.image_uuids

    def plan_lines(self, index: int, settings: GatewaySettings) -> list[str]:
        upstream_model = self.upstream_model or "(the first model the upstream lists)"
        return [
            f"replica {index}: backend openai -> {self.base_url}",
            f"  upstream model: {upstream_model}",
            f"  api key: {'set' if self.api_key else 'none'}",
            f"  timeout: {self.timeout:g} s (connect {self.connect_timeout:g} s), "
            f"health check every {self.health_interval:g} s",
        ]
