"""A `vllm` entry -> its `vllm serve` processes: one command per replica, with its share of
a GPU and its log file. Used by the builder (to run them) and the plan (to print them)."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import TYPE_CHECKING

from vlm_gateway.backends.vllm.backend import ManagedVllmBackend, Supervision
from vlm_gateway.backends.vllm.on_demand import LoadableVllmBackend
from vlm_gateway.config.settings import GatewaySettings
from vlm_gateway.launch.vllm_command import VllmCommand, first_max_model_len
from vlm_gateway.launch.vllm_sleep import with_sleep_mode
from vlm_gateway.media.settings import MODALITIES, media_limits_for, video_sampling

if TYPE_CHECKING:  # the settings module imports this one for its plan lines
    from vlm_gateway.backends.base import BuildContext
    from vlm_gateway.backends.vllm.settings import VllmBackendSettings


@dataclass(frozen=True)
class PlannedProcess:
    replica: int
    command: VllmCommand
    log_path: Path


def planned_processes(
    settings: GatewaySettings, entry: VllmBackendSettings
) -> list[PlannedProcess]:
    shares = settings.gpu_shares()
    log_dir = Path(entry.log_dir or Path(settings.data_dir) / "logs")
    max_model_len = first_max_model_len(entry.max_model_len, entry.max_model_len_cap, entry.model)
    mm_limits = media_per_prompt(settings, entry)
    sampling = video_sampling(settings.media, entry.media) if "video" in dict(mm_limits) else {}
    processes = []
    for replica in range(entry.replicas):
        command = VllmCommand(
            command=tuple(entry.command),
            model=entry.model,
            served_name=entry.name,
            port=entry.port + replica if entry.port else None,
            max_model_len=max_model_len,
            gpu_memory_utilization=shares.get((entry.name, replica)),
            gpus=tuple(entry.gpus) if entry.gpus is not None else None,
            chat_template=entry.chat_template,
            enable_prefix_caching=entry.enable_prefix_caching,
            mm_limits=mm_limits,
            video_sampling=tuple(sampling.items()),
            extra_args=tuple(entry.extra_args),
            env=tuple(entry.env.items()),
        )
        if entry.swap == "sleep":
            command = with_sleep_mode(command)
        log_path = log_dir / f"vllm-{_safe(entry.name)}-{replica}.log"
        processes.append(PlannedProcess(replica, command, log_path))
    return processes


def media_flags(settings: GatewaySettings, entry: VllmBackendSettings) -> list[str]:
    """`--limit-mm-per-prompt` and `--media-io-kwargs` for the entry, as `vllm serve` gets them
    (the offline engine gets the same, so its captions sample videos alike)."""
    mm_limits = media_per_prompt(settings, entry)
    sampling = video_sampling(settings.media, entry.media) if "video" in dict(mm_limits) else {}
    command = VllmCommand(
        (), entry.model, entry.name, mm_limits=mm_limits, video_sampling=tuple(sampling.items())
    )
    return command.media_flags()


def media_per_prompt(
    settings: GatewaySettings, entry: VllmBackendSettings
) -> tuple[tuple[str, int], ...]:
    """Items per request vLLM allows for each modality the model takes: the very limits the
    gateway checks requests against, so vLLM neither refuses what the gateway let through nor
    profiles memory for more than it will ever get (its own default is 999 of each)."""
    modalities = entry.modalities()
    limits: list[tuple[str, int]] = []
    if "image" in modalities:
        limits.append(("image", entry.image_limits(settings.images).max_images))
    media = media_limits_for(settings.media, entry.media)
    limits += [(kind, media.of(kind).max_parts) for kind in MODALITIES if kind in modalities]
    return tuple(limits)


def describe_processes(settings: GatewaySettings, entry: VllmBackendSettings) -> list[str]:
    """check-config's lines for one vllm entry: each process's exact argv and env additions."""
    lines = []
    for process in planned_processes(settings, entry):
        command = process.command
        lines.append(f"process {process.replica}: vllm serve, log {process.log_path}")
        lines.append("  argv: " + _quoted(command.argv()))
        env = command.env_additions()
        lines.append(
            "  env additions: "
            + (" ".join(f"{key}={value}" for key, value in env.items()) if env else "(none)")
        )
        lines.append("  max_model_len: " + _describe_max_model_len(entry, command))
        lines.append(
            "  gpu_memory_utilization: "
            + (
                f"{command.gpu_memory_utilization:g}"
                if command.gpu_memory_utilization
                else "(vLLM default)"
            )
            + (f" on GPU {list(entry.gpus)}" if entry.gpus else "")
        )
    lines.append(
        f"  startup timeout {entry.startup_timeout:g} s; liveness every "
        f"{entry.liveness_interval:g} s ({'image' if entry.probe_image else 'text'} "
        f"1-token chat); restart backoff {entry.restart_backoff:g} s .. "
        f"{entry.restart_backoff_max:g} s; a progress line every {entry.progress_interval:g} s "
        "while it starts"
    )
    return lines


def _describe_max_model_len(entry: VllmBackendSettings, command: VllmCommand) -> str:
    if entry.max_model_len == "auto":
        start = command.max_model_len or "vLLM's derived maximum"
        return f"auto: start at {start}, lowered to vLLM's estimate if the KV cache cannot hold it"
    if entry.max_model_len is None:
        return "(vLLM default: the model's maximum)"
    return str(entry.max_model_len)


def _quoted(argv: list[str]) -> str:
    import shlex

    return " ".join(arg if arg == "<free port>" else shlex.quote(arg) for arg in argv)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def build_managed_vllm(
    entry: VllmBackendSettings, context: BuildContext
) -> list[ManagedVllmBackend]:
    # The entry's keys of the same names (startup_timeout, liveness_*, restart_*, ...).
    keys = {field.name for field in dataclass_fields(Supervision)}
    supervision = Supervision(**entry.model_dump(include=keys))
    # `load: on_demand`: launched by the on-demand manager, not with the gateway.
    on_demand = entry.load == "on_demand"
    kind = LoadableVllmBackend if on_demand else ManagedVllmBackend
    swap = {"swap": entry.swap} if on_demand else {}  # how an on-demand unload frees the GPU
    return [
        kind(
            entry.name,
            process.command,
            context.client,
            sequencer=context.sequencer,
            log_path=process.log_path,
            max_model_len=entry.max_model_len,
            supervision=supervision,
            timeout=entry.timeout,
            replica=process.replica,
            max_connections=context.settings.max_upstream_connections,
            **swap,
        )
        for process in planned_processes(context.settings, entry)
    ]
