"""The human-readable plan `check-config` prints: what the gateway would serve, and how.
Each entry's own lines come from its backend kind (`ModelEntry.plan_lines`)."""

from __future__ import annotations

from vlm_gateway.config.settings import GatewaySettings


def describe_plan(settings: GatewaySettings) -> list[str]:
    lines = [
        f"listen: http://{settings.host}:{settings.port}",
        f"batches: data in {settings.data_dir}, up to "
        f"{settings.batch.concurrency_per_model} requests in flight per model (live first)",
    ]
    if settings.tracing.enabled:
        lines.append(settings.tracing.plan_line())
    names = settings.model_names()
    lines.append(f"models: {len(names)}" + ("" if names else " (none configured)"))
    for name in names:
        replicas = settings.entries_for(name)
        suffix = f" ({len(replicas)} replicas, least in-flight first)" if len(replicas) > 1 else ""
        lines.append(f"- {name}{suffix}")
        limits = replicas[0].image_limits(settings.images)
        resized = f", shrunk to cover {limits.describe()['resize']}" if limits.resize else ""
        lines.append(
            f"    images: at most {limits.max_images} per request, "
            f"{limits.max_bytes / 2**20:g} MiB and {limits.max_pixels:,} pixels each{resized}"
        )
        for index, entry in enumerate(replicas):
            lines.extend("    " + line for line in entry.plan_lines(index, settings))
    return lines
