"""The human-readable plan `check-config` prints: what the gateway would serve, and how.
Each entry's own lines come from its backend kind (`ModelEntry.plan_lines`)."""

from __future__ import annotations

from vlm_gateway.config.load_budget import load_plan_lines
from vlm_gateway.config.on_demand import idle_words
from vlm_gateway.config.settings import GatewaySettings, ModelEntry
from vlm_gateway.media.settings import MODALITIES, MediaSettings, media_limits_for


def describe_plan(settings: GatewaySettings) -> list[str]:
    lines = [
        f"listen: http://{settings.host}:{settings.port}",
        f"batches: data in {settings.data_dir}, up to "
        f"{settings.batch.concurrency_per_model} requests in flight per model (live first)",
    ]
    if settings.tracing.enabled:
        lines.append(settings.tracing.plan_line())
    lines.extend(load_plan_lines(settings))
    names = settings.model_names()
    lines.append(f"models: {len(names)}" + ("" if names else " (none configured)"))
    for name in names:
        replicas = settings.entries_for(name)
        suffix = f" ({len(replicas)} replicas, least in-flight first)" if len(replicas) > 1 else ""
        lines.append(f"- {name}{suffix}")
        if replicas[0].load == "on_demand":
            first = replicas[0]
            lines.append(
                f"    loads on demand: requests wait up to {first.load_timeout:g} s "
                f"(at most {first.load_queue} at once); {idle_words(first.idle_unload)}"
            )
        limits = replicas[0].image_limits(settings.images)
        resized = f", shrunk to cover {limits.describe()['resize']}" if limits.resize else ""
        lines.append(
            f"    images: at most {limits.max_images} per request, "
            f"{limits.max_bytes / 2**20:g} MiB and {limits.max_pixels:,} pixels each{resized}"
        )
        lines.extend("    " + line for line in _media_lines(replicas[0], settings.media))
        for index, entry in enumerate(replicas):
            lines.extend("    " + line for line in entry.plan_lines(index, settings))
    return lines


def _media_lines(entry: ModelEntry, media: MediaSettings) -> list[str]:
    """What the model takes, and the video and audio limits of those it takes (the first entry
    decides for all replicas, as for images)."""
    modalities = entry.modalities()
    lines = ["inputs: " + ", ".join(modalities)]
    limits = media_limits_for(media, entry.media)
    said = [
        f"{kind} up to {limits.of(kind).max_parts} per request, "
        f"{limits.of(kind).max_bytes / 2**20:g} MiB, {limits.of(kind).max_seconds:g} s"
        for kind in MODALITIES
        if kind in modalities
    ]
    if said:
        lines.append("media: " + "; ".join(said))
    return lines
