"""Video and audio through a real gateway process, driven by the official SDK: what the upstream
receives (the client's own bytes, or a fetched file as a data URL), and the 4xx clients see for
bad media, with nothing forwarded."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.image_server import ImageServer
from tests.support.media import b64, data_url, mp3_bytes, noise_wav, video_bytes, wav_bytes
from tests.support.processes import GatewayProcess

MP4 = video_bytes(seconds=1)
WAV = wav_bytes(seconds=1)
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\n"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    work = tmp_path_factory.mktemp("gateway-media")
    upstream_entry = {"backend": "openai", "upstream_model": "ok"}
    with FakeUpstream() as upstream, ImageServer({"/clip.mp4": MP4}) as media:
        upstream_entry["base_url"] = upstream.base_url
        config = {
            "data_dir": str(work / "data"),
            "images": {"allowed_networks": ["127.0.0.1/32"]},  # the loopback media server only
            "media": {"audio": {"max_seconds": 5}},
            "models": [
                {"name": "omni", **upstream_entry, "input_modalities": ["text", "video", "audio"]},
                {"name": "vision", **upstream_entry},
            ],
        }
        gateway = GatewayProcess(config, work).start()
        try:
            yield gateway, upstream, media
        finally:
            gateway.stop()


@pytest.fixture
def client(servers):
    servers[1].clear()
    return openai.OpenAI(base_url=servers[0].url + "/v1", api_key="x", max_retries=0)


def ask(*parts):
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "what happens?"}]}]


def forwarded_parts(upstream: FakeUpstream) -> list[dict]:
    return [p for p in upstream.requests[-1]["messages"][0]["content"] if p["type"] != "text"]


def test_a_video_data_url_reaches_the_upstream_as_sent(servers, client):
    url = data_url(MP4, "video/mp4")
    part = {"type": "video_url", "video_url": {"url": url}, "uuid": "clip-1"}
    client.chat.completions.create(model="omni", messages=ask(part))
    assert forwarded_parts(servers[1]) == [part]


def test_streamed_input_audio_reaches_the_upstream_as_sent(servers, client):
    part = {"type": "input_audio", "input_audio": {"data": b64(WAV), "format": "wav"}}
    stream = client.chat.completions.create(model="omni", messages=ask(part), stream=True)
    assert list(stream)
    assert forwarded_parts(servers[1]) == [part]


def test_an_http_video_is_forwarded_as_a_data_url(servers, client):
    part = {"type": "video_url", "video_url": {"url": servers[2].url("/clip.mp4")}}
    client.chat.completions.create(model="omni", messages=ask(part))
    assert forwarded_parts(servers[1])[0]["video_url"]["url"] == data_url(MP4, "video/mp4")


def test_the_sdk_s_own_file_part_with_audio_reaches_the_upstream_as_audio_url(servers, client):
    url = data_url(WAV, "audio/wav")
    client.chat.completions.create(
        model="omni", messages=ask({"type": "file", "file": {"file_data": url}})
    )
    assert forwarded_parts(servers[1]) == [{"type": "audio_url", "audio_url": {"url": url}}]


def test_models_list_each_model_s_modalities(servers):
    listing = httpx.get(servers[0].url + "/v1/models").json()["data"]
    modalities = {m["id"]: m["vlm_gateway"]["input_modalities"] for m in listing}
    assert modalities == {"omni": ["text", "video", "audio"], "vision": ["text", "image"]}


@pytest.mark.parametrize(
    "model,part,code",
    [
        (
            "omni",
            {"type": "video_url", "video_url": {"url": data_url(MP4[:-900], "video/mp4")}},
            "invalid_video",
        ),
        (
            "omni",
            {"type": "input_audio", "input_audio": {"data": b64(noise_wav()), "format": "wav"}},
            "invalid_audio",
        ),
        (
            "omni",
            {"type": "input_audio", "input_audio": {"data": b64(mp3_bytes()), "format": "wav"}},
            "invalid_audio",
        ),
        (
            "omni",
            {"type": "input_audio", "input_audio": {"data": b64(wav_bytes(6)), "format": "wav"}},
            "audio_too_long",
        ),
        (
            "vision",
            {"type": "video_url", "video_url": {"url": data_url(MP4, "video/mp4")}},
            "video_input_not_supported",
        ),
        (
            "omni",
            {"type": "file", "file": {"file_data": data_url(PDF, "application/pdf")}},
            "unsupported_file_type",
        ),
        (
            "omni",
            {"type": "video_url", "video_url": {"url": "http://169.254.169.254/x.mp4"}},
            "video_url_blocked",
        ),
        (
            "omni",
            {"type": "audio_url", "audio_url": {"url": "http://10.0.0.1/x.wav"}},
            "audio_url_blocked",
        ),
    ],
)
def test_bad_media_is_a_400_naming_the_part_and_nothing_is_forwarded(
    servers, client, model, part, code
):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=ask(part))
    error = caught.value.body
    assert error["code"] == code
    assert error["param"].startswith("messages[0].content[0]")
    assert servers[1].requests == []


def test_an_unknown_part_type_lists_what_is_accepted(servers, client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="omni", messages=ask({"type": "hologram"}))
    assert caught.value.body["param"] == "messages[0].content[0].type"
    assert "'video_url'" in caught.value.body["message"]


def test_the_responses_api_s_input_file_with_a_video_reaches_the_upstream_as_video_url(
    servers, client
):
    url = data_url(MP4, "video/mp4")
    file_part = {"type": "input_file", "file_data": url, "filename": "clip.mp4"}
    client.responses.create(
        model="omni",
        input=[{"role": "user", "content": [file_part, {"type": "input_text", "text": "what?"}]}],
    )
    assert forwarded_parts(servers[1]) == [{"type": "video_url", "video_url": {"url": url}}]


def test_a_truncated_input_file_is_a_400_naming_the_responses_part(servers, client):
    file_part = {"type": "input_file", "file_data": data_url(MP4[:-900], "video/mp4")}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="omni", input=[{"role": "user", "content": [file_part]}])
    assert caught.value.body["param"] == "input[0].content[0]"
    assert servers[1].requests == []
