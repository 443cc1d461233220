"""The `tracing:` section: OpenTelemetry spans for each request (docs/operations.md, "Tracing").

Off unless `enabled`. Then the `otel` extra must be installed; that is checked here, so a missing
package is a config error naming the key (also in check-config), not an ImportError at start.
"""

from __future__ import annotations

import importlib.util
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

OTEL_EXTRA_HINT = "install the otel extra: pip install 'vlm-gateway[otel]'"
# What each exporter needs besides the SDK.
_EXPORTER_MODULES = {
    "otlp": "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "console": "opentelemetry.sdk.trace.export",
}


class TracingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    # otlp: OTLP over HTTP (protobuf) to a collector; console: one JSON span per line on stdout.
    exporter: Literal["otlp", "console"] = "otlp"
    # The collector's traces URL. None: the SDK's own default, which reads the standard
    # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT variables and otherwise
    # sends to http://localhost:4318/v1/traces.
    endpoint: Annotated[str, Field(pattern=r"^https?://")] | None = None
    service_name: Annotated[str, Field(min_length=1)] = "vlm-gateway"
    # Share of new traces recorded; a request that arrives with a traceparent follows its
    # caller's decision instead.
    sample_ratio: Annotated[float, Field(ge=0, le=1)] = 1.0

    def plan_line(self) -> str:
        """check-config's line when tracing is on."""
        where = self.endpoint or "the OTEL_EXPORTER_OTLP_* endpoint (default localhost:4318)"
        to = f"OTLP/HTTP to {where}" if self.exporter == "otlp" else "the console (stdout)"
        return (
            f"tracing: spans of service {self.service_name!r} to {to}, "
            f"{self.sample_ratio:.0%} of new traces"
        )

    @model_validator(mode="after")
    def _otel_installed(self) -> TracingSettings:
        if self.enabled:
            for module in ("opentelemetry.sdk.trace", _EXPORTER_MODULES[self.exporter]):
                if not _importable(module):
                    raise ValueError(f"enabled, but {module} is not installed; {OTEL_EXTRA_HINT}")
        return self


def _importable(module: str) -> bool:
    """Without importing the module itself (its parents are imported to look inside them)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package; a parent set to None
        return False
