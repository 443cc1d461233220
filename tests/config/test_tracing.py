"""The `tracing:` section: off by default, checked keys, the check-config line, and a clear
config error (not an ImportError) when it is enabled without the `otel` extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.support.processes import REPO
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.config.loading import ConfigError, load_settings
from vlm_gateway.config.plan import describe_plan


def write(tmp_path, text: str):
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_off_by_default_and_on_when_enabled(tmp_path):
    assert settings_model().model_validate({}).tracing.enabled is False
    pytest.importorskip("opentelemetry.sdk.trace")
    config = write(
        tmp_path,
        """\
        tracing:
          enabled: true
          endpoint: http://collector:4318/v1/traces
          sample_ratio: 0.25
        """,
    )
    settings = load_settings(settings_model(), config)
    assert settings.tracing.exporter == "otlp" and settings.tracing.service_name == "vlm-gateway"
    assert (
        "tracing: spans of service 'vlm-gateway' to OTLP/HTTP to "
        "http://collector:4318/v1/traces, 25% of new traces"
    ) in describe_plan(settings)


def test_bad_keys_are_named(tmp_path):
    config = write(
        tmp_path,
        """\
        tracing:
          exporter: zipkin
          endpoint: collector:4318
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_settings(settings_model(), config)
    reasons = "\n".join(info.value.reasons)
    assert "tracing.exporter" in reasons and "tracing.endpoint" in reasons


NO_SDK = """
import sys
for name in ("opentelemetry.sdk", "opentelemetry.exporter"):
    sys.modules[name] = None  # importing them fails, as where the otel extra is not installed
from vlm_gateway.cli.main import main
main()
"""


def test_enabled_without_the_extra_is_a_config_error(tmp_path):
    config = write(tmp_path, "tracing: {enabled: true}\n")
    result = subprocess.run(
        [sys.executable, "-c", NO_SDK, "check-config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{config}:1: tracing: " in result.stderr  # the key and its line
    assert "pip install 'vlm-gateway[otel]'" in result.stderr
