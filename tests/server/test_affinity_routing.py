"""Image-affinity routing end to end: the real gateway process in front of two fake replicas.

Model `aff` (`routing: affinity`, `image_uuids: true`) and model `lb` (the default,
least_busy) are both served by the same two upstreams. Under affinity every request with a
given image reaches the same replica, the images spread over both, and each image part carries
its digest as vLLM's `uuid`; under least_busy the same image lands on both replicas. A replica
that is not ready is passed over (no failover needed), and its images come back to it once it
is ready again."""

from __future__ import annotations

import random
from collections import defaultdict

import httpx
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.images import png_data_url
from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess

IMAGES = [png_data_url(32, 32, seed=seed) for seed in range(12)]
PROMPTS = ["What is this?", "Caption it.", "Any text in it?", "Colours?"]
ATTEMPTS = "x-vlmgw-attempts"


def entry(name: str, upstream: FakeUpstream, **extra) -> dict:
    return {
        "name": name,
        "backend": "openai",
        "base_url": upstream.base_url,
        "upstream_model": "ok",
        "health_interval": 0.2,
        **extra,
    }


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """(first, second, gateway)."""
    workdir = tmp_path_factory.mktemp("affinity")
    with FakeUpstream() as first, FakeUpstream() as second:
        # `routing`: the model's first entry decides; `image_uuids`: each upstream's own.
        affinity = {"routing": "affinity", "image_uuids": True}
        config = {
            "data_dir": str(workdir / "data"),
            "models": [
                entry("aff", first, **affinity),
                entry("aff", second, image_uuids=True),
                entry("lb", first),
                entry("lb", second),
            ],
        }
        with GatewayProcess(config, workdir).start() as gateway:
            yield first, second, gateway


def ask(client: httpx.Client, model: str, image: str, prompt: str) -> httpx.Response:
    content = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": prompt}]
    body = {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": content}]}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response


def where_each_image_went(first: FakeUpstream, second: FakeUpstream) -> dict[str, set[str]]:
    """Image URL -> the replicas ("first", "second") that received it."""
    seen: dict[str, set[str]] = defaultdict(set)
    for label, upstream in (("first", first), ("second", second)):
        for body in upstream.requests:
            seen[body["messages"][0]["content"][0]["image_url"]["url"]].add(label)
    return seen


def send_all(gateway: GatewayProcess, model: str, images: list[str]) -> list[httpx.Response]:
    """Every prompt about every image, one after another, in a shuffled (fixed) order: in
    config order, least busy's turns would pair each image with one replica by parity."""
    work = [(image, prompt) for prompt in PROMPTS for image in images]
    random.Random(17).shuffle(work)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        return [ask(client, model, image, prompt) for image, prompt in work]


def test_affinity_sends_an_image_always_to_the_same_replica(replicas):
    first, second = replicas[0], replicas[1]
    first.clear(), second.clear()
    send_all(replicas[2], "aff", IMAGES)
    seen = where_each_image_went(first, second)
    assert set(seen) == set(IMAGES)
    assert all(len(replicas_of) == 1 for replicas_of in seen.values()), seen
    homes = [next(iter(replicas_of)) for replicas_of in seen.values()]
    assert set(homes) == {"first", "second"}  # the images spread over both
    # Each image part went on with its digest as vLLM's uuid, the same one every time.
    uuids: dict[str, set[str]] = defaultdict(set)
    for body in first.requests + second.requests:
        part = body["messages"][0]["content"][0]
        uuids[part["image_url"]["url"]].add(part["uuid"])
    assert all(len(ids) == 1 and next(iter(ids)).startswith("sha256:") for ids in uuids.values())
    assert len({next(iter(ids)) for ids in uuids.values()}) == len(IMAGES)


def test_least_busy_spreads_the_same_image_over_both(replicas):
    first, second = replicas[0], replicas[1]
    first.clear(), second.clear()
    send_all(replicas[2], "lb", IMAGES)
    seen = where_each_image_went(first, second)
    on_both = [url for url, replicas_of in seen.items() if len(replicas_of) == 2]
    assert len(on_both) >= len(IMAGES) // 2, seen  # ties rotate: most images hit both
    # Without `image_uuids` nothing is added to the parts (the upstream may not be vLLM).
    assert all("uuid" not in body["messages"][0]["content"][0] for body in first.requests)


def model_replica_states(gateway: GatewayProcess, model: str) -> list[str]:
    report = httpx.get(gateway.url + "/ready", params={"model": model}, timeout=10).json()
    return [card["state"] for card in report["models"][model]["replicas"]]


def test_a_replica_not_ready_is_passed_over_and_gets_its_images_back(replicas):
    first, second, gateway = replicas
    first.clear(), second.clear()
    send_all(gateway, "aff", IMAGES[:1] + IMAGES)  # the homes, with every image's first
    homes = where_each_image_went(first, second)
    of_first = [url for url, replicas_of in homes.items() if replicas_of == {"first"}]
    assert of_first
    first.stop()
    try:
        wait_until(lambda: model_replica_states(gateway, "aff")[0] != "ready", "first not ready")
        first.clear(), second.clear()
        answers = send_all(gateway, "aff", of_first)
        assert all(ATTEMPTS not in r.headers for r in answers)  # skipped, not failed over
        assert not first.requests and len(second.requests) == len(answers)
    finally:
        first.start()
    wait_until(lambda: model_replica_states(gateway, "aff")[0] == "ready", "first ready again")
    first.clear(), second.clear()
    send_all(gateway, "aff", of_first)
    assert len(first.requests) == len(PROMPTS) * len(of_first) and not second.requests
