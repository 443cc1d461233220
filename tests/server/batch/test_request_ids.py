"""Each batch line is a request of its own: it has its own request id, the upstream receives
it, and its output or error row says it in `response.request_id` (OpenAI's batch output
shape)."""

from __future__ import annotations

import io
import re

import openai
import pytest

from tests.server.batch.batch_support import chat_line, jsonl, result_lines, wait_final
from tests.support.fake_upstream import FakeUpstream
from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess

GENERATED = re.compile(r"req_[0-9a-f]{32}")


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    work = tmp_path_factory.mktemp("batch-request-ids")
    models = [
        {"name": name, "backend": "openai", "base_url": upstream.base_url, "upstream_model": name}
        for name in ("ok", "fault-400")
    ]
    with GatewayProcess({"data_dir": str(work / "data"), "models": models}, work) as gw:
        yield gw


def upstream_id_of(upstream: FakeUpstream, content: str) -> str | None:
    """The X-Request-Id of the upstream request whose last message was `content`."""
    seen = list(zip(upstream.requests, upstream.request_headers, strict=False))
    ids = [
        headers.get("x-request-id")
        for body, headers in seen
        if body and body["messages"][-1]["content"] == content
    ]
    assert len(ids) == 1, (content, ids)
    return ids[0]


def test_each_line_has_its_own_id_upstream_and_in_its_row(gateway, upstream):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    lines = [
        chat_line("line-1", "ok", content="rid line-1"),
        chat_line("line-2", "ok", content="rid line-2"),
        chat_line("refused", "fault-400", content="rid refused"),
        chat_line("free text id", "ok", content="rid free text"),  # not usable in an id
    ]
    file = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = wait_final(client, batch.id)
    assert batch.status == "completed"
    rows = result_lines(client, batch.output_file_id) + result_lines(client, batch.error_file_id)
    by_custom_id = {row["custom_id"]: row for row in rows}

    for custom_id in ("line-1", "line-2", "refused"):
        request_id = f"{batch.id}-{custom_id}"
        assert by_custom_id[custom_id]["response"]["request_id"] == request_id
        assert upstream_id_of(upstream, f"rid {custom_id}") == request_id
    assert by_custom_id["refused"]["error"]["code"]  # an error row, and it carries the id too
    assert by_custom_id["refused"]["response"]["status_code"] == 400

    made = by_custom_id["free text id"]["response"]["request_id"]
    assert GENERATED.fullmatch(made)
    assert upstream_id_of(upstream, "rid free text") == made
    # The batch's own work belongs to no request, not to the one that created it.
    finished = wait_until(
        lambda: [
            line for line in gateway.log().splitlines() if f"batch {batch.id} completed" in line
        ]
    )
    assert re.search(r"Z INFO [\w.]+: batch", finished[0]), finished
