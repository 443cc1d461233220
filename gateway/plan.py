"""The human-readable plan `check-config` prints: what the gateway would serve, and how."""

from __future__ import annotations

from gateway.settings import GatewaySettings, OpenAIBackendSettings


def describe_plan(settings: GatewaySettings) -> list[str]:
    lines = [f"listen: http://{settings.host}:{settings.port}"]
    names = settings.model_names()
    lines.append(f"models: {len(names)}" + ("" if names else " (none configured)"))
    for name in names:
        replicas = settings.entries_for(name)
        suffix = f" ({len(replicas)} replicas, least in-flight first)" if len(replicas) > 1 else ""
        lines.append(f"- {name}{suffix}")
        for index, entry in enumerate(replicas):
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
    raise TypeError(f"no plan for settings of type {type(entry).__name__}")
