"""The app's metrics object: its own registry per app, bounded labels, usage and refusal
counting, and prometheus_client's multiprocess mode across real processes."""

from __future__ import annotations

import os
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import REPO
from vlm_gateway.core.metrics import IMAGE_LIMITS, SSRF, Metrics


def samples(text: bytes | str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """{sorted labels: value} of every sample called `name` in an exposition."""
    if isinstance(text, bytes):
        text = text.decode()
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_each_app_has_its_own_registry():
    first, second = Metrics(["m"]), Metrics(["m"])
    first.request_done("/v1/chat/completions", "POST", 200, "m", "0", 0.1)
    assert sum(samples(first.render(), "vlmgw_requests_total").values()) == 1
    assert samples(second.render(), "vlmgw_requests_total") == {}


def test_model_label_is_a_configured_model_or_empty():
    metrics = Metrics(["m"])
    for model in ("m", "client-made-up-1", "client-made-up-2"):
        metrics.request_done("/v1/chat/completions", "POST", 404, model, "", 0.01)
    counts = samples(metrics.render(), "vlmgw_requests_total")
    assert {dict(labels)["model"]: value for labels, value in counts.items()} == {"m": 1, "": 2}


def test_usage_counts_tokens_by_key_and_ignores_what_is_not_a_count():
    metrics = Metrics(["m"])
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    metrics.usage("m", "1", usage, key="alpha")
    metrics.usage("m", "1", usage, key="beta")
    metrics.usage("m", "1", {"prompt_tokens": True, "completion_tokens": -4}, key="alpha")
    metrics.usage("m", "1", None, key="alpha")
    text = metrics.render()
    labels = (("model", "m"), ("replica", "1"))
    assert samples(text, "vlmgw_prompt_tokens_total") == {
        (("key", "alpha"), *labels): 7,
        (("key", "beta"), *labels): 7,
    }
    assert samples(text, "vlmgw_completion_tokens_total") == {
        (("key", "alpha"), *labels): 3,
        (("key", "beta"), *labels): 3,
    }


def test_requests_and_images_carry_the_key_name():
    metrics = Metrics(["m"])
    metrics.request_done("/v1/chat/completions", "POST", 200, "m", "0", 0.1, key="alpha")
    metrics.request_images("m", "alpha", 2)
    metrics.request_images("m", "alpha", 0)  # a request without images adds nothing
    text = metrics.render()
    [labels] = samples(text, "vlmgw_requests_total")
    assert dict(labels)["key"] == "alpha"
    assert samples(text, "vlmgw_request_images_total") == {(("key", "alpha"), ("model", "m")): 2}


def test_image_refusals_by_reason_and_broken_images_not_counted():
    metrics = Metrics(["m"])
    metrics.image_refused("m", "image_url_blocked")
    metrics.image_refused("m", "too_many_images")
    metrics.image_refused("m", "image_too_large")
    metrics.image_refused("m", "invalid_base64")  # the client's mistake, not policy
    counts = samples(metrics.render(), "vlmgw_refusals_total")
    assert counts == {
        (("model", "m"), ("reason", SSRF)): 1,
        (("model", "m"), ("reason", IMAGE_LIMITS)): 2,
    }


_CHILD = """
import sys
from vlm_gateway.core.metrics import Metrics
metrics = Metrics.from_environment(["m"])
for _ in range(int(sys.argv[1])):
    metrics.request_done("/v1/chat/completions", "POST", 200, "m", "0", 0.5)
    metrics.batch_request("m", ok=False)
if sys.argv[2] == "render":
    sys.stdout.write(metrics.render().decode())
"""


def test_multiprocess_mode_sums_every_process(tmp_path):
    """Two worker processes count; a third, which counted nothing itself, answers the scrape
    with their sum (PROMETHEUS_MULTIPROC_DIR, as prometheus_client reads it at import)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}

    def child(count: int, render: bool = False) -> str:
        argv = [sys.executable, "-c", _CHILD, str(count), "render" if render else "-"]
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    child(3)
    child(4)
    text = child(0, render=True)
    labels = (
        ("method", "POST"),
        ("model", "m"),
        ("replica", "0"),
        ("route", "/v1/chat/completions"),
    )
    counted = (("key", ""), *labels, ("status", "200"))
    assert samples(text, "vlmgw_requests_total") == {counted: 7}
    assert samples(text, "vlmgw_request_duration_seconds_sum") == {labels: 3.5}
    failed = (("model", "m"), ("outcome", "failed"))
    assert samples(text, "vlmgw_batch_requests_total") == {failed: 7}
