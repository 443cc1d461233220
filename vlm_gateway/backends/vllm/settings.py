"""`backend: vllm` entries: `vllm serve` launched and supervised by the gateway."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from vlm_gateway.backends.vllm.processes import describe_processes
from vlm_gateway.config.settings import GatewaySettings, ModelEntry
from vlm_gateway.images.model_size import model_input_size, model_modalities
from vlm_gateway.launch.gpu_sharing import GpuClaim
from vlm_gateway.launch.vllm_command import GATEWAY_OWNED_FLAGS, MEDIA_FLAGS, flag_name
from vlm_gateway.launch.vllm_sleep import SLEEP_MODE_FLAG, sleep_mode_unavailable

# What to set instead of a flag the gateway writes itself (extra_args may not repeat them).
_INSTEAD = {
    "--max-model-len": "the entry's own key (max_model_len)",
    "--limit-mm-per-prompt": (
        "images.max_images, media.video.max_parts and media.audio.max_parts "
        "(per model or gateway-wide)"
    ),
    "--trust-request-mm-kwargs": (
        "nothing: the gateway sets it and checks per-request media_io_kwargs and "
        "mm_processor_kwargs itself (media.video.max_frames)"
    ),
    "--media-io-kwargs": (
        "media.video.num_frames or media.video.fps (per model or gateway-wide); "
        "a request may still send its own media_io_kwargs"
    ),
    SLEEP_MODE_FLAG: "swap: sleep (it also switches on the routes sleep mode needs)",
}


class VllmBackendSettings(ModelEntry):
    """`vllm serve` launched and supervised by the gateway (docs/managed-vllm.md)."""

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
    progress_interval: Annotated[float, Field(gt=0)] = 5.0  # a log line while it starts
    # How an on-demand unload frees the GPU: stop the process (a load starts it again), or
    # vLLM's sleep mode (weights parked in host memory; CUDA/ROCm only; docs/on-demand.md).
    swap: Literal["stop", "sleep"] = "stop"

    kind_image_resize: ClassVar[str] = "auto"
    kind_takes_media_kwargs: ClassVar[bool] = True
    kind_bounds_media_kwargs: ClassVar[bool] = True  # launched with --trust-request-mm-kwargs

    @model_validator(mode="after")
    def _no_flags_the_gateway_sets(self) -> VllmBackendSettings:
        owned = {*GATEWAY_OWNED_FLAGS, *MEDIA_FLAGS, SLEEP_MODE_FLAG}
        if self.max_model_len:
            owned.add("--max-model-len")
        for arg in self.extra_args:
            flag = flag_name(arg)
            if flag in owned:
                instead = _INSTEAD.get(flag, "the entry's own key (name, port)")
                raise ValueError(f"extra_args: {flag} is set by the gateway; use {instead} instead")
        return self

    def preferred_image_size(self) -> tuple[int, int] | None:
        """From the model's image processor config (a local directory, or a hub id already in
        the local Hugging Face cache); None for processors that tile or keep any size."""
        return model_input_size(self.model)

    def known_modalities(self) -> tuple[str, ...]:
        """From the model's config.json (video and audio too, where it has their tokens or
        towers); text and image when it cannot be read."""
        return model_modalities(self.model) or ("text", "image")

    def sends_image_ids(self) -> bool:
        return True  # vLLM takes them (backends/openai_upstream/image_ids.py)

    def gpu_claims(self) -> list[GpuClaim]:
        """One claim per replica process, for splitting shared GPUs (launch.gpu_sharing)."""
        gpus = tuple(self.gpus) if self.gpus is not None else None
        return [
            GpuClaim(
                (self.name, index), gpus, self.gpu_memory_utilization, self.load == "on_demand"
            )
            for index in range(self.replicas)
        ]

    def plan_lines(self, index: int, settings: GatewaySettings) -> list[str]:
        header = (
            f"replica {index}: backend vllm, managed by the gateway "
            f"({self.replicas} process(es), model {self.model})"
        )
        lines = [header] + ["  " + line for line in describe_processes(settings, self)]
        return lines + self._swap_lines()

    def _swap_lines(self) -> list[str]:
        if self.swap == "stop":
            return []
        lines = [
            "  swap: sleep: an unload parks the weights in host memory (vLLM sleep mode, "
            "level 1) and a load wakes them; its development routes answer on 127.0.0.1 only "
            "and the gateway never forwards them"
        ]
        unavailable = sleep_mode_unavailable(self.env)
        if unavailable:
            lines.append(
                f"  warning: swap: sleep needs a CUDA or ROCm GPU, and {unavailable}: vLLM "
                "refuses to start with sleep mode there (use swap: stop)"
            )
        return lines
