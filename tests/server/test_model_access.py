"""Each key's `models` list, on a real gateway process driven by the official SDK: a model
outside it is answered exactly like one that does not exist (404 `model_not_found`, listing
only the key's models) on chat, completions and /v1/models, before any image is fetched or
any upstream called. Also: a key configured only by its SHA-256 digest works, a wrong one
is 401."""

from __future__ import annotations

import hashlib

import httpx
import openai
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.image_server import ImageServer
from tests.support.images import image_message, png_bytes
from tests.support.processes import GatewayProcess
from tests.support.settings import upstream_entry

WIDE_KEY = "sk-access-wide-0123456789"  # in the config as itself, every model
NARROW_KEY = "sk-access-narrow-0123456789"  # in the config only as its digest, model m only
NARROW_DIGEST = hashlib.sha256(NARROW_KEY.encode()).hexdigest()
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    work = tmp_path_factory.mktemp("model-access")
    with FakeUpstream() as upstream, ImageServer({"/cat.png": png_bytes(40, 40)}) as images:
        config = {
            "data_dir": str(work / "data"),
            "images": {"allowed_networks": ["127.0.0.1/32"]},  # the loopback image server
            "security": {
                "keys": [
                    {"name": "wide", "key": WIDE_KEY},
                    {"name": "narrow", "sha256": NARROW_DIGEST, "models": ["m"]},
                ]
            },
            "models": [
                upstream_entry("m", upstream.base_url, "ok"),
                {**upstream_entry("other", upstream.base_url, "ok"), "images": {"max_images": 1}},
            ],
        }
        with GatewayProcess(config, work) as gateway:
            yield gateway, upstream, images


def sdk(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


@pytest.fixture
def narrow(servers) -> openai.OpenAI:
    return sdk(servers[0], NARROW_KEY)


@pytest.fixture
def wide(servers) -> openai.OpenAI:
    return sdk(servers[0], WIDE_KEY)


def not_found(call) -> dict:
    with pytest.raises(openai.NotFoundError) as caught:
        call()
    assert caught.value.status_code == 404
    return caught.value.body


def unknown_model_error(model: str, listed: str) -> dict:
    """What the gateway says for a model that does not exist, for a key that may use `listed`."""
    return {
        "message": f"The model '{model}' does not exist. Available models: {listed}.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_a_model_outside_the_list_is_an_unknown_model_on_chat(narrow, servers):
    _, upstream, _ = servers
    upstream.clear()
    forbidden = not_found(lambda: narrow.chat.completions.create(model="other", messages=HI))
    unknown = not_found(lambda: narrow.chat.completions.create(model="nope", messages=HI))
    assert forbidden == unknown_model_error("other", "m")
    assert unknown == unknown_model_error("nope", "m")  # only the key's models are listed
    streamed = not_found(
        lambda: narrow.chat.completions.create(model="other", messages=HI, stream=True)
    )
    assert streamed == forbidden
    assert upstream.requests == []
    assert narrow.chat.completions.create(model="m", messages=HI).choices[0].message.content


def test_a_forbidden_models_images_are_never_fetched_nor_its_limits_said(narrow, wide, servers):
    _, _, images = servers
    two = [image_message("what is this?", images.url("/cat.png")) for _ in range(2)]
    # "other" takes at most one image: a 400 saying so would tell the key the model exists.
    assert not_found(
        lambda: narrow.chat.completions.create(model="other", messages=two)
    ) == unknown_model_error("other", "m")
    assert images.hits["/cat.png"] == 0
    with pytest.raises(openai.BadRequestError) as caught:  # the same request, a key that may
        wide.chat.completions.create(model="other", messages=two)
    assert caught.value.code == "too_many_images"


def test_a_model_outside_the_list_is_an_unknown_model_on_completions(narrow, wide, servers):
    _, upstream, _ = servers
    upstream.clear()
    forbidden = not_found(lambda: narrow.completions.create(model="other", prompt="hi"))
    assert forbidden == unknown_model_error("other", "m")
    assert upstream.requests == []
    assert narrow.completions.create(model="m", prompt="hi").choices[0].text == "hello"
    assert wide.completions.create(model="other", prompt="hi").choices[0].text == "hello"


def test_models_lists_and_retrieves_only_the_keys_models(narrow, wide):
    assert [model.id for model in narrow.models.list()] == ["m"]
    assert [model.id for model in wide.models.list()] == ["m", "other"]
    assert narrow.models.retrieve("m").id == "m"
    assert wide.models.retrieve("other").id == "other"
    assert not_found(lambda: narrow.models.retrieve("other")) == unknown_model_error("other", "m")
    assert not_found(lambda: narrow.models.retrieve("nope")) == unknown_model_error("nope", "m")
    assert not_found(lambda: wide.models.retrieve("nope")) == unknown_model_error(
        "nope", "m, other"
    )


def test_a_key_configured_by_its_digest_only_is_served_and_a_wrong_key_is_401(servers):
    gateway = servers[0]
    assert [model.id for model in sdk(gateway, NARROW_KEY).models.list()] == ["m"]
    # The digest is not a key: sending what the config holds gets nowhere.
    for wrong in (NARROW_DIGEST, NARROW_KEY + "x", "sk-wrong"):
        with pytest.raises(openai.AuthenticationError) as caught:
            sdk(gateway, wrong).models.list()
        assert caught.value.code == "invalid_api_key"
    bare = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "m", "messages": HI})
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"


def test_no_key_in_the_config_file_or_the_log(servers):
    gateway = servers[0]
    log = gateway.log()
    assert NARROW_KEY not in gateway.config_path.read_text()  # only its digest is there
    assert WIDE_KEY not in log and NARROW_KEY not in log
