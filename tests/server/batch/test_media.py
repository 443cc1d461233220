"""Batch API lines with video and audio parts (a real gateway process, the official SDK, the
fake upstream): they go through the same resolver as live requests, so a valid video reaches
the upstream as it was sent and a truncated one is its line's 400 in the error file while the
other lines complete."""

from __future__ import annotations

import base64
import io

import openai
import pytest

from tests.server.batch.batch_support import chat_line, jsonl, result_lines, wait_final
from tests.support.media import truncated_mp4, video_bytes, wav_bytes
from tests.support.processes import GatewayProcess
from tests.support.settings import omni_upstream


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    work = tmp_path_factory.mktemp("batch-media")
    model = omni_upstream(upstream.base_url)
    with GatewayProcess({"data_dir": str(work / "data"), "models": [model]}, work) as proc:
        yield proc


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def media_line(custom_id: str, kind: str, url: str) -> dict:
    part = {"type": f"{kind}_url", f"{kind}_url": {"url": url}}
    return chat_line(custom_id, "ok", [part, {"type": "text", "text": custom_id}])


def test_video_and_audio_lines_complete_and_a_truncated_video_fails_alone(gateway, upstream):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    video = data_url("video/mp4", video_bytes())
    audio = data_url("audio/wav", wav_bytes())
    lines = [
        media_line("video", "video", video),
        media_line("audio", "audio", audio),
        media_line("cut", "video", data_url("video/mp4", truncated_mp4())),
        chat_line("text", "ok"),
    ]
    upstream.clear()
    file = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = wait_final(client, batch.id)
    assert batch.status == "completed"
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (4, 3, 1)

    output = {line["custom_id"]: line for line in result_lines(client, batch.output_file_id)}
    assert sorted(output) == ["audio", "text", "video"]
    assert all(line["response"]["status_code"] == 200 for line in output.values())
    [error] = result_lines(client, batch.error_file_id)
    assert error["custom_id"] == "cut" and error["response"]["status_code"] == 400
    body = error["response"]["body"]["error"]
    assert body["code"] == "invalid_video" and body["param"] == "messages[0].content[0]"
    assert body["message"].startswith("The video in messages[0].content[0]")

    # The upstream got the media parts as sent, and never the truncated video.
    sent = {
        body["messages"][0]["content"][-1]["text"]: body["messages"][0]["content"][0]
        for body in upstream.requests
        if isinstance(body["messages"][0]["content"], list)
    }
    assert sorted(sent) == ["audio", "video"]
    assert sent["video"]["type"] == "video_url" and sent["video"]["video_url"]["url"] == video
    assert sent["audio"]["type"] == "audio_url" and sent["audio"]["audio_url"]["url"] == audio
