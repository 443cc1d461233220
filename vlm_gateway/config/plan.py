"""The human-readable plan `check-config` prints: what the gateway would serve, and how."""

from __future__ import annotations

from vlm_gateway.images.resolve import limits_for
from vlm_gateway.backends.vllm.processes import describe_processes
from vlm_gateway.config.settings import (
    Blip2BackendSettings, GatewaySettings, OpenAIBackendSettings, VllmBackendSettings,
)


def describe_plan(settings: GatewaySettings) -> list[str]:
    lines = [f"listen: http://{settings.host}:{settings.port}",
             f"batches: data in {settings.data_dir}, up to "
             f"{settings.batch.concurrency_per_model} requests in flight per model (live first)"]
    names = settings.model_names()
    lines.append(f"models: {len(names)}" + ("" if names else " (none configured)"))
    for name in names:
        replicas = settings.entries_for(name)
        suffix = f" ({len(replicas)} replicas, least in-flight first)" if len(replicas) > 1 else ""
        lines.append(f"- {name}{suffix}")
        limits = limits_for(settings.images, replicas[0])
        lines.append(f"    images: at most {limits.max_images} per request, "
                     f"{limits.max_bytes / 2**20:g} MiB and {limits.max_pixels:,} pixels each")
        for index, entry in enumerate(replicas):
            if isinstance(entry, VllmBackendSettings):
                lines.append(f"    replica {index}: backend vllm, managed by the gateway "
                             f"({entry.replicas} process(es), model {entry.model})")
                lines.extend("      " + line for line in describe_processes(settings, entry))
                continue
            lines.extend("    " + line for line in _describe_entry(index, entry))
    return lines


def _describe_entry(index: int, entry) -> list[str]:
    if isinstance(entry, OpenAIBackendSettings):
        upstream_model = entry.upstream_model or "(the first model the upstream lists)"
        return [
            f"replica {index}: backend openai -> {entry.base_url}",
            f"  upstream model: {upstream_model}",
            f"  api key: {'set' if entry.api_key else 'none'}",
            f"  timeout: {entry.timeout:g} s (connect {entry.connect_timeout:g} s), "
            f"health check every {entry.health_interval:g} s",
        ]
    if isinstance(entry, Blip2BackendSettings):
        context = f"{entry.context_length} tokens" if entry.context_length else "the model's own"
        return [
            f"replica {index}: backend blip2, in this process -> {entry.model}",
            f"  device: {entry.device}, dtype: {entry.dtype}, context: {context}",
            f"  batches of up to {entry.max_batch_size}, gathered for {entry.batch_wait_ms:g} ms",
        ]
    raise TypeError(f"no plan for settings of type {type(entry).__name__}")
