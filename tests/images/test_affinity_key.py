"""What the resolver works out for image-affinity routing: a digest of every image as forwarded
(the `uuid` vLLM gets) and the request's affinity key (the text before the first image and the
images' digests), recorded in the request's context for the replica pick."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.image_server import ImageServer
from tests.support.images import png_bytes, png_data_url
from tests.support.settings import two_upstreams
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.backends.openai_upstream.image_ids import add_image_uuids
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.core.request_context import RequestContext, bound_request
from vlm_gateway.images.fetch import ImageFetcher
from vlm_gateway.images.resolve import ImageResolver

IMAGE = png_data_url(32, 32, seed=1)
OTHER = png_data_url(32, 32, seed=2)


def chat(*content: dict, system: str | None = None) -> ChatCompletionRequest:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": list(content)})
    return ChatCompletionRequest.model_validate({"model": "wide", "messages": messages})


def image(url: str, **extra) -> dict:
    return {"type": "image_url", "image_url": {"url": url}, **extra}


def text(words: str) -> dict:
    return {"type": "text", "text": words}


def resolved(
    body: ChatCompletionRequest, digests_for=None, **images
) -> tuple[ChatCompletionRequest, int | None]:
    """The body after resolution, and the affinity key its context got."""
    config = two_upstreams(**images)
    context = RequestContext("req_test")

    async def run() -> None:
        fetcher = ImageFetcher(config.images)
        resolver = ImageResolver(
            config.images, config.image_limits, fetcher, digests_for=digests_for
        )
        try:
            with bound_request(context):
                await resolver.resolve(body)
        finally:
            await fetcher.aclose()

    asyncio.run(run())
    return body, context.affinity_key


def digests(body: ChatCompletionRequest) -> list[str | None]:
    return [p.digest for p in body.messages[-1].content if p.type == "image_url"]


def test_the_same_image_gets_the_same_key_whatever_is_asked_after_it():
    first, key = resolved(chat(image(IMAGE), text("What is in this picture?")))
    _, again = resolved(chat(image(IMAGE), text("Describe it in one word.")))
    _, other = resolved(chat(image(OTHER), text("What is in this picture?")))
    assert key is not None and key == again and key != other
    [digest] = digests(first)
    assert digest is not None and digest.startswith("sha256:")


def test_the_text_before_the_first_image_is_part_of_the_key():
    _, plain = resolved(chat(image(IMAGE), text("caption")))
    _, asked_first = resolved(chat(text("Look:"), image(IMAGE), text("caption")))
    _, with_system = resolved(chat(image(IMAGE), text("caption"), system="Be brief."))
    assert len({plain, asked_first, with_system}) == 3


def test_an_image_fetched_by_url_and_the_same_bytes_inline_share_a_digest():
    with ImageServer({"/cat.png": png_bytes(32, 32, seed=1)}) as server:
        fetched, key = resolved(
            chat(image(server.url("/cat.png")), text("caption")), allow_private_networks=True
        )
    inline, inline_key = resolved(chat(image(IMAGE), text("caption")))
    assert digests(fetched) == digests(inline) and key == inline_key


def test_a_request_without_images_gets_no_key():
    _, key = resolved(chat(text("hello")))
    assert key is None


def test_vllm_gets_each_digest_as_uuid_and_a_client_uuid_is_kept():
    body, _ = resolved(chat(image(IMAGE), image(OTHER, uuid="client-id"), text("compare")))
    payload = body.model_dump(mode="json", exclude_unset=True)
    add_image_uuids(payload, body)
    parts = payload["messages"][0]["content"]
    assert parts[0]["uuid"] == digests(body)[0]
    assert parts[1]["uuid"] == "client-id"
    assert "uuid" not in parts[2]
    # Without the option (an upstream that is not vLLM) nothing is added.
    plain = body.model_dump(mode="json", exclude_unset=True)["messages"][0]["content"]
    assert "uuid" not in plain[0] and plain[1]["uuid"] == "client-id"


def test_models_that_need_no_digest_pay_for_none():
    body, key = resolved(chat(image(IMAGE), text("caption")), digests_for=lambda _m: False)
    assert digests(body) == [None] and key is None


@pytest.mark.parametrize(
    ("extra", "vllm", "wanted"),
    [
        ({}, False, False),  # least busy, an upstream that may not be vLLM: no hashing
        ({"routing": "affinity"}, False, True),
        ({"image_uuids": True}, False, True),
        ({}, True, True),  # managed vLLM always gets image ids
    ],
)
def test_which_models_get_their_images_digested(extra, vllm, wanted):
    if vllm:
        entry = {"name": "m", "backend": "vllm", "model": "/nonexistent/model", **extra}
    else:
        entry = {"name": "m", "backend": "openai", "base_url": "http://127.0.0.1:9/v1", **extra}
    config = settings_model().model_validate({"models": [entry]})
    assert config.image_digests("m") is wanted
    assert config.image_digests("unknown") is False
