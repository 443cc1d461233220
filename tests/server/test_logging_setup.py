"""The process's log: one format for our lines and uvicorn's (text with timestamps, or one JSON
object per line), the request id on lines about a request, and base64 never written out."""

from __future__ import annotations

import base64
import io
import json
import logging
import re

import openai
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess
from vlm_gateway.core.request_context import RequestContext, bound_request
from vlm_gateway.server.logging_setup import logging_config

HI = [{"role": "user", "content": "hi"}]
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream() as fake:
        yield fake


def serve(upstream: FakeUpstream, work, log_format: str) -> GatewayProcess:
    config = {
        "data_dir": str(work / "data"),
        "log_format": log_format,
        "models": [
            {
                "name": "m",
                "backend": "openai",
                "base_url": upstream.base_url,
                "upstream_model": "ok",
            }
        ],
    }
    return GatewayProcess(config, work).start()


def chat_with_id(gateway: GatewayProcess, request_id: str) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    client.chat.completions.create(
        model="m", messages=HI, extra_headers={"X-Request-Id": request_id}
    )


def test_json_format_is_one_object_a_line_uvicorns_lines_included(upstream, tmp_path):
    gateway = serve(upstream, tmp_path, "json")
    try:
        chat_with_id(gateway, "json-format-1")

        def access_entry() -> dict | None:
            entries = [json.loads(line) for line in gateway.log().splitlines()]
            found = [e for e in entries if e.get("request_id") == "json-format-1"]
            return found[0] if found else None

        entry = wait_until(access_entry, "the JSON access line")
    finally:
        gateway.stop()
    assert entry["logger"] == "vlm_gateway.access" and entry["level"] == "INFO"
    assert entry["status"] == 200 and entry["model"] == "m"
    assert entry["method"] == "POST" and entry["path"] == "/v1/chat/completions"
    assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0
    lines = gateway.log().splitlines()
    entries = [json.loads(line) for line in lines]  # every line, or this raises
    for each in entries:
        assert {"ts", "level", "logger", "msg", "request_id"} <= set(each), each
        assert TIMESTAMP.fullmatch(each["ts"]), each
    startup = [e for e in entries if e["msg"] == "Application startup complete."]
    assert startup and startup[0]["logger"] == "uvicorn.error" and startup[0]["request_id"] is None


def test_text_format_stamps_every_line_uvicorns_too(upstream, tmp_path):
    gateway = serve(upstream, tmp_path, "text")
    try:
        chat_with_id(gateway, "text-format-1")
        wait_until(lambda: "[text-format-1]" in gateway.log(), "the text access line")
    finally:
        gateway.stop()
    lines = gateway.log().splitlines()
    # Each record starts with a timestamp; a message of several lines continues indented.
    assert lines and all(TIMESTAMP.match(line) or line.startswith(" ") for line in lines), lines
    assert any(
        re.search(r"Z INFO uvicorn\.error: Application startup complete\.$", line) for line in lines
    )
    access = [line for line in lines if "[text-format-1]" in line]
    assert len(access) == 1
    assert re.match(TIMESTAMP.pattern + r" INFO vlm_gateway\.access \[text-format-1\]: ", access[0])
    assert uvicorn_access_lines(lines) == []  # ours replaces uvicorn's, not one more line


def uvicorn_access_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "uvicorn.access" in line]


# -- the configured handler, in this process ------------------------------------------------


@pytest.fixture
def configured():
    """The gateway's logging config, writing to a buffer; the root logger is put back after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()

    def configure(log_format: str) -> io.StringIO:
        config = logging_config("info", log_format)
        config["handlers"]["stderr"]["stream"] = stream
        logging.config.dictConfig(config)
        return stream

    yield configure
    for handler in root.handlers:
        if handler not in saved[0]:
            root.removeHandler(handler)
    for handler in saved[0]:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(saved[1])


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_base64_is_redacted_in_both_formats_with_the_request_id_kept(configured, log_format):
    stream = configured(log_format)
    payload = base64.b64encode(bytes(3000)).decode()
    log = logging.getLogger("vlm_gateway.test")
    with bound_request(RequestContext("redact-1", model="m")):
        log.warning("bad image data:image/png;base64,%s", payload)
        try:
            raise ValueError(payload)
        except ValueError:
            log.exception("failed")
    written = stream.getvalue()
    assert payload[:200] not in written
    assert "data:image/png;base64,<base64, 4000 characters>" in written
    if log_format == "json":
        first, second = (json.loads(line) for line in written.splitlines()[:2])
        assert first["request_id"] == "redact-1" and first["model"] == "m"
        assert second["msg"] == "failed" and "ValueError: <base64, 4000" in second["exc"]
    else:
        assert re.match(TIMESTAMP.pattern + r" WARNING vlm_gateway\.test \[redact-1\]: ", written)
        assert "ValueError: <base64, 4000 characters>" in written
