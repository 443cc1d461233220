"""Usage per key name on a real gateway process (JSON logs), driven by the official SDK: the
access line carries the key's name, the tokens and the images; every other line about the
request carries the name too; /metrics counts requests, tokens and images under a `key` label.
Names are shown, keys never: not in the log, not in /metrics."""

from __future__ import annotations

import hashlib
import json

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fake_upstream import FakeUpstream
from tests.support.images import image_message, png_data_url
from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess
from tests.support.settings import upstream_entry

ALPHA_KEY = "sk-usage-alpha-0123456789"
BETA_KEY = "sk-usage-beta-0123456789"  # in the config only as its digest
WRONG_KEY = "sk-usage-wrong-0123456789"
HI = [{"role": "user", "content": "hi"}]
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
# The fake upstream's usage for one choice: 5 prompt tokens, 1 completion token.
PROMPT, COMPLETION = 5, 1


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("key-usage")
    with FakeUpstream() as upstream:
        config = {
            "data_dir": str(work / "data"),
            "log_format": "json",
            "security": {
                "keys": [
                    {"name": "alpha", "key": ALPHA_KEY},
                    {"name": "beta", "sha256": hashlib.sha256(BETA_KEY.encode()).hexdigest()},
                ]
            },
            "models": [
                upstream_entry("m", upstream.base_url, "ok"),
                upstream_entry("drop", upstream.base_url, "fault-drop"),
            ],
        }
        with GatewayProcess(config, work) as gateway:
            send_traffic(gateway)
            yield gateway


def sdk(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def with_id(request_id: str) -> dict:
    return {"extra_headers": {"X-Request-Id": request_id}}


def send_traffic(gateway: GatewayProcess) -> None:
    alpha, beta = sdk(gateway, ALPHA_KEY), sdk(gateway, BETA_KEY)
    photo = [image_message("what is this?", png_data_url())]
    alpha.chat.completions.create(model="m", messages=photo, **with_id("usage-alpha-image"))
    alpha.completions.create(model="m", prompt="hi", **with_id("usage-alpha-completion"))
    stream = alpha.chat.completions.create(
        model="m", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    assert [chunk.usage.prompt_tokens for chunk in stream if chunk.usage] == [PROMPT]
    beta.chat.completions.create(model="m", messages=HI, **with_id("usage-beta"))
    with pytest.raises(openai.APIError):  # the upstream breaks the stream off: a warning line
        list(beta.chat.completions.create(model="drop", messages=HI, stream=True))
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, WRONG_KEY).models.list(**with_id("usage-wrong-key"))


def log_entries(gateway: GatewayProcess) -> list[dict]:
    return [json.loads(line) for line in gateway.log().splitlines() if line.startswith("{")]


def access_entry(gateway: GatewayProcess, request_id: str) -> dict:
    def found() -> list[dict]:
        return [
            entry
            for entry in log_entries(gateway)
            if entry["logger"] == "vlm_gateway.access" and entry["request_id"] == request_id
        ]

    [entry] = wait_until(found, f"the access line of {request_id}")
    return entry


def test_the_access_line_carries_the_key_name_tokens_and_images(gateway):
    entry = access_entry(gateway, "usage-alpha-image")
    assert entry["msg"].endswith(
        f" key=alpha model=m prompt_tokens={PROMPT} completion_tokens={COMPLETION} images=1"
    )
    assert (entry["key"], entry["model"], entry["images"]) == ("alpha", "m", 1)
    assert (entry["prompt_tokens"], entry["completion_tokens"]) == (PROMPT, COMPLETION)
    completion = access_entry(gateway, "usage-alpha-completion")
    assert completion["key"] == "alpha" and completion["prompt_tokens"] == PROMPT
    assert "images" not in completion  # none sent, none said
    assert access_entry(gateway, "usage-beta")["key"] == "beta"  # a digest-only key's name
    refused = access_entry(gateway, "usage-wrong-key")
    assert refused["status"] == 401 and refused["key"] == "anonymous"


def test_every_line_about_a_request_carries_its_key_name(gateway):
    warnings = [
        entry
        for entry in log_entries(gateway)
        if entry["level"] == "WARNING" and "stream for model drop" in entry["msg"]
    ]
    assert warnings and all(entry["key"] == "beta" for entry in warnings)


def counted(text: str, name: str, **match: str) -> float:
    """The sum of the samples called `name` whose labels include `match`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and match.items() <= sample.labels.items()
    )


def test_metrics_count_requests_tokens_and_images_by_key_name(gateway):
    text = httpx.get(gateway.url + "/metrics").text
    requests = "vlmgw_requests_total"
    assert counted(text, requests, route=CHAT, key="alpha", status="200") == 2
    assert counted(text, requests, route=COMPLETIONS, key="alpha", status="200") == 1
    assert counted(text, requests, route=CHAT, key="beta", model="m", status="200") == 1
    assert counted(text, requests, route="/v1/models", key="anonymous", status="401") == 1
    assert counted(text, "vlmgw_prompt_tokens_total", key="alpha", model="m") == 3 * PROMPT
    assert counted(text, "vlmgw_completion_tokens_total", key="alpha") == 3 * COMPLETION
    assert counted(text, "vlmgw_prompt_tokens_total", key="beta") == PROMPT
    assert counted(text, "vlmgw_request_images_total", key="alpha", model="m") == 1
    assert counted(text, "vlmgw_request_images_total", key="beta") == 0


def test_keys_are_never_in_the_log_nor_the_metrics(gateway):
    access_entry(gateway, "usage-wrong-key")  # the traffic's last line is written
    shown = gateway.log() + httpx.get(gateway.url + "/metrics").text
    for key in (ALPHA_KEY, BETA_KEY, WRONG_KEY):
        assert key not in shown
    assert "alpha" in shown and "beta" in shown  # names are
