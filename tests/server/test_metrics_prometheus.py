"""A real Prometheus server scrapes a real gateway: after a known mix of requests (some failing
on purpose), the counts Prometheus stored, read back through its HTTP API, are that traffic.

scripts/test.sh installs Debian's `prometheus` (as root); under CI a missing binary fails this
test instead of skipping it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.support.images import image_message
from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess, free_port, stop_process_group, wait_http
from tests.support.settings import upstream_entry

KEY = "sk-prometheus-test-0123456789"
HI = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
# The traffic the test sends, and what Prometheus must then hold per (model, status).
OK, STREAMS, UNKNOWN, UPSTREAM_400, BLOCKED_IMAGE, BAD_KEY = 5, 2, 3, 2, 1, 2


def _prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI"):  # scripts/test.sh installs it: never skip this in CI
            pytest.fail("prometheus is missing: scripts/test.sh should have installed it")
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    return path


class Prometheus:
    """`prometheus` on a free loopback port, scraping one target every second."""

    def __init__(self, binary: str, target: str, work: Path) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {
                    "job_name": "gateway",
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        config_path = work / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = work / "prometheus.log"
        self.argv = [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_http(self.url + "/-/ready", 60, self.proc, self.log_path)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)

    def query(self, promql: str) -> list[dict]:
        response = httpx.get(self.url + "/api/v1/query", params={"query": promql}, timeout=10)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def by(self, promql: str, *labels: str) -> dict[tuple[str, ...], float]:
        """{(label values...): value} of an instant vector."""
        return {
            tuple(row["metric"].get(label, "") for label in labels): float(row["value"][1])
            for row in self.query(promql)
        }


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("prometheus-gateway")

    def entry(name: str, upstream_model: str) -> dict:
        return upstream_entry(name, upstream.base_url, upstream_model)

    config = {
        "data_dir": str(work / "data"),
        "security": {"api_keys": [KEY]},  # /metrics stays public: Prometheus sends no key
        "models": [entry("m", "ok"), entry("bad", "fault-400")],
    }
    with GatewayProcess(config, work) as gateway:
        yield gateway


@pytest.fixture
def prometheus(gateway, tmp_path) -> Iterator[Prometheus]:
    server = Prometheus(_prometheus_binary(), f"127.0.0.1:{gateway.port}", tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def send_traffic(gateway: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)
    for _ in range(STREAMS):  # streams first: each one's count lands as its response ends
        options = {"include_usage": True}
        list(
            client.chat.completions.create(
                model="m", messages=HI, stream=True, stream_options=options
            )
        )
    for _ in range(OK):
        client.chat.completions.create(model="m", messages=HI)
    for _ in range(UNKNOWN):
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=HI)
    for _ in range(UPSTREAM_400):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="bad", messages=HI)
    for _ in range(BLOCKED_IMAGE):  # a private address: the SSRF guard refuses it
        with pytest.raises(openai.BadRequestError, match="image_url_blocked|refused|blocked"):
            message = image_message("Describe.", "http://127.0.0.1:9/cat.png")
            client.chat.completions.create(model="m", messages=[message])
    stranger = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-wrong", max_retries=0)
    for _ in range(BAD_KEY):
        with pytest.raises(openai.AuthenticationError):
            stranger.chat.completions.create(model="m", messages=HI)


def test_counts_stored_by_prometheus_match_the_traffic_sent(gateway, prometheus):
    wait_until(
        lambda: prometheus.by('up{job="gateway"}', "job") == {("gateway",): 1.0},
        "Prometheus scrapes the gateway successfully",
        deadline_s=60,
    )
    send_traffic(gateway)
    sent_by = time.time()
    # A request is counted as its response ends, before the gateway's event loop serves anything
    # else: a scrape that began after the client had every answer sees every count.
    wait_until(
        lambda: any(v > sent_by for v in prometheus.by('timestamp(up{job="gateway"})').values()),
        "a scrape after the traffic is stored",
        deadline_s=60,
        interval_s=0.2,
    )

    requests = prometheus.by(
        f'sum by (model, status) (vlmgw_requests_total{{route="{CHAT}"}})', "model", "status"
    )
    assert requests == {
        ("m", "200"): OK + STREAMS,
        ("m", "400"): BLOCKED_IMAGE,
        ("", "404"): UNKNOWN,  # an unknown model name is never a label value
        ("bad", "400"): UPSTREAM_400,
        ("", "401"): BAD_KEY,
    }
    assert prometheus.by("sum by (reason) (vlmgw_refusals_total)", "reason") == {
        ("auth",): BAD_KEY,
        ("ssrf",): BLOCKED_IMAGE,
    }
    answered = OK + STREAMS  # the fake upstream's usage: 5 prompt tokens, 1 completion token
    assert prometheus.by('sum(vlmgw_prompt_tokens_total{model="m"})') == {(): 5 * answered}
    assert prometheus.by('sum(vlmgw_completion_tokens_total{model="m"})') == {(): answered}
    first_tokens = 'sum(vlmgw_time_to_first_token_seconds_count{model="m"})'
    assert prometheus.by(first_tokens) == {(): STREAMS}
    durations = f'sum(vlmgw_request_duration_seconds_count{{route="{CHAT}"}})'
    assert prometheus.by(durations) == {(): sum(requests.values())}
    ready = prometheus.by('vlmgw_replica_state{state="ready"}', "model", "replica")
    assert ready == {("m", "0"): 1, ("bad", "0"): 1}
