"""Typed settings, built once at start (from YAML, `VLMGW_*` variables and CLI flags) and
handed down. Unknown keys are errors, so a typo is reported instead of silently ignored.

`models:` entries are `ModelEntry` subclasses that each backend kind defines in its own
folder (vlm_gateway/backends/<kind>/settings.py); `vlm_gateway.backends.kinds.settings_model()`
is this class with every registered kind's entry type plugged in."""

from __future__ import annotations

import os
from collections.abc import Hashable
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from vlm_gateway.config.on_demand import IdleUnload, loaded_models_error, startup_keys_error
from vlm_gateway.config.security import SecuritySettings
from vlm_gateway.config.tracing import TracingSettings
from vlm_gateway.images.decode import ImageLimits
from vlm_gateway.images.settings import ImageSettings, ModelImageLimits, limits_for, parse_resize
from vlm_gateway.launch.gpu_sharing import GpuClaim, split_gpu_memory
from vlm_gateway.media.resolve import ModelMedia
from vlm_gateway.media.settings import MediaSettings, ModelMediaLimits, media_limits_for

# Upstream statuses failed over to another replica unless a model says otherwise: a 500 too,
# since a replica that answers 500 to everything would otherwise cost a client request per
# failure until it is ejected; the poison-request guard bounds what a 500 may cost
# (backends/failover_rule.py).
DEFAULT_FAILOVER_ON = (500, 502, 503, 504)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelEntry(Section):
    """What every `models:` entry has. A backend kind subclasses it with its own keys, narrows
    `backend` to its name, and says what check-config prints for it."""

    name: Annotated[str, Field(min_length=1)]
    backend: str
    images: ModelImageLimits | None = None  # overrides of the top-level `images:` limits
    media: ModelMediaLimits | None = None  # overrides of the top-level `media:` limits
    # Reliability (docs/reliability.md); a model's first entry decides for all its replicas.
    retry_budget: Annotated[float, Field(ge=0, le=1)] = 0.2  # failovers per request, windowed
    eject_after: Annotated[int, Field(ge=1)] = 5  # consecutive failures that eject a replica
    # Seconds from a request's first attempt within which its answer (a stream: its opening)
    # must come, failovers included; None: no overall deadline, each attempt has its `timeout`.
    request_timeout: Annotated[float, Field(gt=0)] | None = None
    # Upstream answers (statuses) tried once more on another replica, before the first byte.
    failover_on: list[int] = Field(default_factory=lambda: list(DEFAULT_FAILOVER_ON))
    # How a replica is picked: the least busy, or by the request's images (backends/affinity.py).
    routing: Literal["least_busy", "affinity"] = "least_busy"
    # What the model takes; None: what its kind knows (`kind_input_modalities`).
    input_modalities: list[Literal["text", "image", "video", "audio"]] | None = None
    # Loading (docs/on-demand.md): at startup and kept, or on the first request that needs it,
    # which waits up to `load_timeout` (at most `load_queue` requests wait, the rest get 503),
    # and unloaded after `idle_unload` without requests or to make room for another model.
    load: Literal["startup", "on_demand"] = "startup"
    idle_unload: IdleUnload = "never"
    load_timeout: Annotated[float, Field(gt=0)] = 300.0
    load_queue: Annotated[int, Field(ge=0)] = 64

    # Images per request this kind's models take when not configured (None: `images.max_images`).
    kind_max_images: ClassVar[int | None] = None
    # `images.resize` when the entry does not set it: kinds that know their model's input
    # size say "auto" (docs/operations.md, "Image preparation").
    kind_image_resize: ClassVar[str] = "none"
    _input_size: tuple[int, int] | None = PrivateAttr(default=None)  # found once, then kept
    kind_input_modalities: ClassVar[tuple[str, ...]] = ("text", "image")
    # Whether this kind hands per-request `media_io_kwargs` / `mm_processor_kwargs` to vLLM,
    # and whether the gateway holds them to its own bounds first (a vLLM it launches trusting
    # them: media/request_kwargs.py); a remote upstream's server judges them itself.
    kind_takes_media_kwargs: ClassVar[bool] = False
    kind_bounds_media_kwargs: ClassVar[bool] = False
    # Whether the gateway holds this kind's model in its own memory, so that it may load and
    # unload it (a remote upstream is neither: it is never loaded on demand).
    kind_loads_on_demand: ClassVar[bool] = True

    @field_validator("failover_on")
    @classmethod
    def _server_errors_only(cls, statuses: list[int]) -> list[int]:
        # A 4xx is about the request or its caller, not the replica: every replica would
        # answer it alike, and the client must see it (a 429 it backs off from itself).
        wrong = [status for status in statuses if not 500 <= status <= 599]
        if wrong:
            raise ValueError(
                f"only 5xx statuses can be failed over, not {wrong}: a 4xx is the request's "
                "own fault and goes back to the client as it is"
            )
        return statuses

    @model_validator(mode="after")
    def _load_keys_fit(self) -> ModelEntry:
        if self.load == "on_demand" and not self.kind_loads_on_demand:
            raise ValueError(
                f"load: on_demand is not for `backend: {self.backend}` models: the gateway does "
                "not hold their model, their server does (remove `load` or set it to startup)"
            )
        problem = startup_keys_error(self.load, self.model_fields_set)
        if problem:
            raise ValueError(problem)
        return self

    def modalities(self) -> tuple[str, ...]:
        """The inputs this model takes: configured, else what its kind knows of it."""
        if self.input_modalities is not None:
            return tuple(self.input_modalities)
        return self.known_modalities()

    def known_modalities(self) -> tuple[str, ...]:
        """A kind that can read its model's own config overrides this (managed vLLM)."""
        return self.kind_input_modalities

    def gpu_claims(self) -> list[GpuClaim]:
        """GPU memory this entry's processes claim (only kinds that launch processes do)."""
        return []

    def sends_image_ids(self) -> bool:
        """Whether this entry's upstream gets each image's digest as its `uuid` (vLLM's)."""
        return False

    def preferred_image_size(self) -> tuple[int, int] | None:
        """(width, height) this entry's model takes images at, for `images.resize: auto`
        (None: unknown, images go on at their own size)."""
        return None

    def image_resize(self) -> tuple[int, int] | None:
        """The input size images are shrunk to cover for this model (None: not shrunk)."""
        setting = parse_resize((self.images and self.images.resize) or self.kind_image_resize)
        if setting == "none":
            return None
        if isinstance(setting, tuple):
            return setting
        # Not found yet is asked again: a hub model may only reach the local cache later.
        if self._input_size is None:
            self._input_size = self.preferred_image_size()
        return self._input_size

    def known_max_images(self) -> int | None:
        """Images per request this model takes when its entry does not say: what its kind
        knows (a kind that reads its model's own config overrides this); None: `images:`'s."""
        return self.kind_max_images

    def image_limits(self, defaults: ImageSettings) -> ImageLimits:
        return limits_for(defaults, self.images, self.known_max_images(), self.image_resize())

    def plan_lines(self, index: int, settings: GatewaySettings) -> list[str]:
        """check-config's lines for this entry as replica `index` of its model."""
        return [f"replica {index}: backend {self.backend}"]


class BatchSettings(Section):
    """The Batch API's runner (docs/batch.md). Live traffic goes first: per model, batch
    requests only fill what live requests leave of `concurrency_per_model`."""

    concurrency_per_model: Annotated[int, Field(ge=1)] = 32
    max_requests_per_batch: Annotated[int, Field(ge=1)] = 50_000
    max_file_bytes: Annotated[int, Field(ge=1)] = 200 * 1024 * 1024
    # Where files and batches live: "sqlite" (embedded, in data_dir, one gateway process) or a
    # postgresql:// URL shared by any number of gateways (the `postgres` extra; env
    # VLMGW_BATCH_STORE). A row a gateway took is taken again lease_seconds after it stopped
    # renewing it (killed, hung).
    store: str = "sqlite"
    lease_seconds: Annotated[float, Field(gt=0)] = 30.0

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if value != "sqlite" and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be 'sqlite' or a postgresql:// URL")
        return value


def _default_data_dir() -> str:
    home_share = os.path.join(os.path.expanduser("~"), ".local", "share")
    base = os.environ.get("XDG_DATA_HOME") or home_share
    return os.path.join(base, "vlm-gateway")


class GatewaySettings(Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # text: one line per record with a timestamp; json: one object per line (docs/operations.md).
    log_format: Literal["text", "json"] = "text"
    access_log: bool = True
    # A Server-Timing header on every answer: the gateway's own time, the upstream's, images'.
    server_timing: bool = True
    # Bare GET /ready: 200 when all models are ready, or when any one is (GET /ready?model=NAME
    # asks about one model).
    ready_policy: Literal["all", "any"] = "all"
    api_docs: bool = True  # GET /docs and /openapi.json
    shutdown_grace: Annotated[float, Field(gt=0)] = 10.0
    # Seconds a client has to send each request's line and headers (slowloris; docs/reliability.md).
    header_timeout: Annotated[float, Field(gt=0)] = 10.0
    max_upstream_connections: Annotated[int, Field(ge=1)] = 1000
    # Models the gateway holds loaded at once (startup and on-demand ones; remote upstreams do
    # not count); None: no cap but the GPUs' memory (docs/on-demand.md).
    max_loaded_models: Annotated[int, Field(ge=1)] | None = None
    models: list[ModelEntry] = Field(default_factory=list)
    # Batch API files and their SQLite store (default: $XDG_DATA_HOME/vlm-gateway).
    data_dir: str = Field(default_factory=_default_data_dir)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    media: MediaSettings = Field(default_factory=MediaSettings)  # video and audio (docs/media.md)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)  # off by default

    @model_validator(mode="after")
    def _gpu_memory_fits(self) -> GatewaySettings:
        self.gpu_shares()  # raises ValueError naming the over-committed GPU
        return self

    @model_validator(mode="after")
    def _room_for_loaded_models(self) -> GatewaySettings:
        for name in self.model_names():
            if len({entry.load for entry in self.entries_for(name)}) > 1:
                raise ValueError(f"models named {name!r}: every replica must have the same `load`")
        problem = loaded_models_error(
            self.max_loaded_models, self.local_model_names("startup"), self.on_demand_models()
        )
        if problem:
            raise ValueError(problem)
        return self

    def local_model_names(self, load: str) -> list[str]:
        """Models held by the gateway (not remote upstreams) whose first entry loads so."""
        return [
            name
            for name in self.model_names()
            if (first := self.entries_for(name)[0]).kind_loads_on_demand and first.load == load
        ]

    def on_demand_models(self) -> list[str]:
        return self.local_model_names("on_demand")

    def gpu_shares(self) -> dict[Hashable, float | None]:
        """(name, replica) -> gpu_memory_utilization for every process the gateway launches."""
        return split_gpu_memory(claim for entry in self.models for claim in entry.gpu_claims())

    def model_names(self) -> list[str]:
        """Distinct model names in config order (entries sharing a name are replicas)."""
        return list(dict.fromkeys(entry.name for entry in self.models))

    def entries_for(self, name: str) -> list[ModelEntry]:
        return [entry for entry in self.models if entry.name == name]

    def input_modalities(self, name: str) -> tuple[str, ...]:
        """What model `name` takes (its first entry decides); text and image if unknown."""
        entries = self.entries_for(name)
        return entries[0].modalities() if entries else ("text", "image")

    def eject_after(self, name: str) -> int:
        entries = self.entries_for(name)
        return entries[0].eject_after if entries else ModelEntry.model_fields["eject_after"].default

    def routing(self, name: str) -> Literal["least_busy", "affinity"]:
        entries = self.entries_for(name)
        return entries[0].routing if entries else "least_busy"

    def image_digests(self, name: str) -> bool:
        """Whether model `name` needs its images digested: to route by them (`affinity`), or
        to send them to vLLM with ids. Otherwise the resolver spares the hashing."""
        entries = self.entries_for(name)
        return bool(entries) and (
            entries[0].routing == "affinity" or any(e.sends_image_ids() for e in entries)
        )

    def request_timeout(self, name: str) -> float | None:
        entries = self.entries_for(name)
        return entries[0].request_timeout if entries else None

    def failover_on(self, name: str) -> frozenset[int]:
        entries = self.entries_for(name)
        return frozenset(entries[0].failover_on if entries else DEFAULT_FAILOVER_ON)

    def retry_budget(self, name: str) -> float:
        entries = self.entries_for(name)
        return entries[0].retry_budget if entries else 0.0

    def image_limits(self, name: str) -> ImageLimits | None:
        """The image limits of model `name` (None: no such model)."""
        entries = self.entries_for(name)
        return entries[0].image_limits(self.images) if entries else None

    def model_media(self, name: str) -> ModelMedia | None:
        """What the media resolver needs of model `name` (None: no such model)."""
        entries = self.entries_for(name)
        if not entries:
            return None
        first = entries[0]
        return ModelMedia(
            limits=media_limits_for(self.media, first.media),
            modalities=first.modalities(),
            takes_media_kwargs=first.kind_takes_media_kwargs,
            bounds_media_kwargs=first.kind_bounds_media_kwargs,
            digests=self.image_digests(name),
            max_pixels=first.image_limits(self.images).max_pixels,
        )
