"""Walking a chat request's video and audio parts: what passes unchanged, what is fetched and
made a data URL, and every refusal as a 400 naming the part, before anything is forwarded."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from tests.images.test_fetch import BLOCKED_ANSWERS, FakeResolver, LoopbackOnly
from tests.support.image_server import ImageServer
from tests.support.media import b64, data_url, mp3_bytes, noise_wav, video_bytes, wav_bytes
from tests.support.settings import DEAD_UPSTREAM
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.config.settings import GatewaySettings
from vlm_gateway.core.errors import InvalidRequestError
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.images.fetch import ImageFetcher
from vlm_gateway.images.resolve import ImageResolver
from vlm_gateway.media.resolve import RequestResolver

MP4 = video_bytes(seconds=1)
WAV = wav_bytes(seconds=1)
ALL = ["text", "image", "video", "audio"]


def gateway(media: dict[str, Any] | None = None, **images: Any) -> GatewaySettings:
    """`omni` takes everything, `vision` text and images only, `vllm_like` omni with digests."""
    upstream = {"backend": "openai", "base_url": DEAD_UPSTREAM}
    return settings_model().model_validate(
        {
            "images": images,
            "media": media or {},
            "models": [
                {"name": "omni", **upstream, "input_modalities": ALL},
                {"name": "vision", **upstream},
                {"name": "ids", **upstream, "input_modalities": ALL, "image_uuids": True},
            ],
        }
    )


def chat(model: str, *parts: dict[str, Any], **extra: Any) -> ChatCompletionRequest:
    content = [*parts, {"type": "text", "text": "what happens?"}]
    return ChatCompletionRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    )


def video(url: str) -> dict[str, Any]:
    return {"type": "video_url", "video_url": {"url": url}}


def audio(url: str) -> dict[str, Any]:
    return {"type": "audio_url", "audio_url": {"url": url}}


def input_audio(data: bytes, fmt: str = "wav") -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": b64(data), "format": fmt}}


def resolve(config: GatewaySettings, body: ChatCompletionRequest, **fetcher: Any) -> None:
    async def run() -> None:
        images = ImageFetcher(config.images, **fetcher)
        try:
            image_resolver = ImageResolver(config.images, config.image_limits, images)
            await RequestResolver(image_resolver, config.model_media, images).resolve(body)
        finally:
            await images.aclose()

    asyncio.run(run())


def refusal(config: GatewaySettings, body: ChatCompletionRequest, **fetcher: Any):
    with pytest.raises(InvalidRequestError) as caught:
        resolve(config, body, **fetcher)
    assert caught.value.status_code == 400
    return caught.value


def parts_of(body: ChatCompletionRequest) -> list[Any]:
    return list(body.messages[0].content)


# -- what passes -------------------------------------------------------------------------------


def test_a_video_data_url_passes_unchanged():
    url = data_url(MP4, "video/mp4")
    body = chat("omni", video(url))
    resolve(gateway(), body)
    assert parts_of(body)[0].video_url.url is url


def test_input_audio_and_audio_urls_pass_unchanged():
    url = data_url(WAV, "audio/wav")
    body = chat("omni", input_audio(WAV), audio(url))
    resolve(gateway(media={"audio": {"max_parts": 2}}), body)
    assert parts_of(body)[0].input_audio.data == b64(WAV)
    assert parts_of(body)[1].audio_url.url is url


def test_a_webm_and_an_mp3_are_taken_for_what_they_are():
    webm = video_bytes(fmt="webm", codec="libvpx")
    body = chat("omni", video(data_url(webm, "video/webm")), input_audio(mp3_bytes(), "mp3"))
    resolve(gateway(), body)


def test_a_file_part_holding_a_video_becomes_a_video_url_part():
    url = data_url(MP4, "video/mp4")
    body = chat("omni", {"type": "file", "file": {"file_data": url, "filename": "clip.mp4"}})
    resolve(gateway(), body)
    (part,) = parts_of(body)[:1]
    assert part.type == "video_url" and part.video_url.url is url


def test_a_file_part_holding_audio_becomes_an_audio_url_part():
    body = chat("omni", {"type": "file", "file": {"file_data": data_url(WAV, "audio/wav")}})
    resolve(gateway(), body)
    assert parts_of(body)[0].type == "audio_url"


def test_an_http_video_is_fetched_and_forwarded_as_a_data_url():
    with ImageServer({"/clip.mp4": MP4}) as server:
        body = chat("omni", video(server.url("/clip.mp4")))
        resolve(gateway(allowed_networks=["127.0.0.1/32"]), body)
    assert parts_of(body)[0].video_url.url == data_url(MP4, "video/mp4")


def test_media_digests_become_part_ids_for_vllm_upstreams():
    body = chat("ids", video(data_url(MP4, "video/mp4")), input_audio(WAV))
    resolve(gateway(), body)
    digests = [part.digest for part in parts_of(body)[:2]]
    assert all(d and d.startswith("sha256:") for d in digests) and digests[0] != digests[1]


# -- what is refused, each naming the part -------------------------------------------------------


def test_a_truncated_mp4_is_refused():
    clip = video_bytes(seconds=2, faststart=True)
    error = refusal(gateway(), chat("omni", video(data_url(clip[: len(clip) // 2], "video/mp4"))))
    assert (error.code, error.param) == ("invalid_video", "messages[0].content[0]")
    assert "truncated" in error.message


def test_a_wav_header_over_noise_is_refused():
    error = refusal(gateway(), chat("omni", input_audio(noise_wav())))
    assert (error.code, error.param) == ("invalid_audio", "messages[0].content[0]")


def test_a_format_that_does_not_match_the_bytes_is_refused():
    error = refusal(gateway(), chat("omni", input_audio(mp3_bytes(), "wav")))
    assert (
        error.code == "invalid_audio" and "declared as 'wav' but its bytes are mp3" in error.message
    )


def test_a_png_labelled_video_mp4_is_refused():
    from tests.support.images import png_bytes

    error = refusal(gateway(), chat("omni", video(data_url(png_bytes(16, 16), "video/mp4"))))
    assert error.code == "invalid_video" and "still image" in error.message


def test_audio_longer_than_the_limit_is_refused():
    config = gateway(media={"audio": {"max_seconds": 2}})
    error = refusal(config, chat("omni", input_audio(wav_bytes(seconds=3))))
    assert (error.code, error.param) == ("audio_too_long", "messages[0].content[0]")


def test_a_video_data_url_over_the_byte_limit_is_refused_before_decoding():
    config = gateway(media={"video": {"max_bytes": 1000}})
    error = refusal(config, chat("omni", video(data_url(MP4, "video/mp4"))))
    assert (error.code, error.param) == ("video_too_large", "messages[0].content[0]")


def test_a_video_to_an_image_only_model_is_refused_before_any_fetch():
    with ImageServer({"/clip.mp4": MP4}) as server:
        config = gateway(allowed_networks=["127.0.0.1/32"])
        error = refusal(config, chat("vision", video(server.url("/clip.mp4"))))
        assert server.hits["/clip.mp4"] == 0
    assert (error.code, error.param) == ("video_input_not_supported", "messages[0].content[0]")


def test_too_many_videos_are_refused():
    url = data_url(MP4, "video/mp4")
    error = refusal(gateway(), chat("omni", video(url), video(url)))
    assert error.code == "too_many_video_parts" and "at most 1" in error.message


def test_a_file_part_holding_a_pdf_is_refused():
    pdf = data_url(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "application/pdf")
    error = refusal(gateway(), chat("omni", {"type": "file", "file": {"file_data": pdf}}))
    assert (error.code, error.param) == ("unsupported_file_type", "messages[0].content[0].file")
    assert "application/pdf" in error.message


def test_media_io_kwargs_are_refused_for_a_backend_that_cannot_honour_them():
    config = settings_model().model_validate(
        {"models": [{"name": "b", "backend": "blip2", "model": "/nonexistent"}]}
    )
    body = chat("b", media_io_kwargs={"video": {"num_frames": 8}})
    error = refusal(config, body)
    assert (error.param, error.code) == ("media_io_kwargs", "unsupported_parameter")


def test_a_video_declared_as_audio_is_refused():
    error = refusal(gateway(), chat("omni", audio(data_url(MP4, "video/mp4"))))
    assert error.code == "invalid_audio" and "not audio/*" in error.message


def test_a_file_url_without_a_media_directory_is_refused():
    error = refusal(gateway(), chat("omni", video("file:///etc/passwd")))
    assert error.code == "video_url_blocked"


def test_a_video_over_the_limit_served_slowly_is_cut_at_the_limit():
    """A chunked body with no length, sent slowly: the fetch stops at the limit, well before
    the server is done (the server's writer is held at a gate the test opens only after)."""
    release = threading.Event()
    big = MP4 + bytes(200_000)  # never probed: it is cut first
    with ImageServer({}) as server:
        server.slow_files["/slow.mp4"] = (big, 32768, release)  # twice the limit, then held
        config = gateway(media={"video": {"max_bytes": 16384}}, allowed_networks=["127.0.0.1/32"])
        error = refusal(config, chat("omni", video(server.url("/slow.mp4"))))
        sent = server.sent["/slow.mp4"]
        release.set()
    assert error.code == "video_too_large" and error.param == "messages[0].content[0]"
    assert sent < len(big) // 2


@pytest.mark.parametrize("modality", ["video", "audio"])
@pytest.mark.parametrize("address,reason", BLOCKED_ANSWERS)
def test_the_ssrf_corpus_is_refused_for_video_and_audio_urls(modality, address, reason):
    network = LoopbackOnly()
    part = video if modality == "video" else audio
    body = chat("omni", part(f"http://media.test/clip.{'mp4' if modality == 'video' else 'wav'}"))
    error = refusal(
        gateway(),
        body,
        resolver=FakeResolver({"media.test": [address]}),
        network_backend=network,
    )
    assert (error.code, error.param) == (f"{modality}_url_blocked", "messages[0].content[0]")
    assert reason in error.message and network.dialled == []
