"""Loading on demand through the gateway (issue 26), driven by the official `openai` SDK: the
gateway is a real uvicorn server on loopback, its models a gated fake kind whose loads and
streams the test holds at gates (tests/support/loadable.py), under `max_loaded_models: 1`.
The same rules against real managed vLLM: tests/backends/vllm/test_on_demand_vllm.py."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.support.app_server import ServedApp, served
from tests.support.loadable import Gate, GatedKind
from tests.support.polling import wait_until
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.server.app import create_app

ADMIN, USER = "sk-admin", "sk-user"
MESSAGES: Any = [{"role": "user", "content": "hi"}]


class OnDemandGateway:
    def __init__(self, served_app: ServedApp, kind: GatedKind) -> None:
        self.served = served_app
        self.kind = kind
        self.url = served_app.url

    def client(self, key: str = USER) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def chat(self, model: str) -> str:
        reply = self.client().chat.completions.create(model=model, messages=MESSAGES)
        return reply.choices[0].message.content or ""

    def loading(self, model: str) -> dict:
        card = httpx.get(f"{self.url}/v1/models/{model}", headers=_auth(USER), timeout=10)
        return card.json()["vlm_gateway"]["loading"]

    def wait_waiting(self, model: str, count: int) -> None:
        wait_until(lambda: self.loading(model)["waiting"] == count, f"{count} waiting for {model}")

    def hold_load(self, model: str) -> Gate:
        gate = self.kind.backends[model].load_gate = Gate()
        return gate


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@contextlib.contextmanager
def on_demand_gateway(tmp_path, **models: dict) -> Iterator[OnDemandGateway]:
    kind = GatedKind()
    entries = [{"name": n, "backend": "gated", "load": "on_demand", **k} for n, k in models.items()]
    settings = settings_model(kind.kinds).model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "max_loaded_models": 1,
            "security": {
                "keys": [
                    {"name": "admin", "key": ADMIN, "admin": True},
                    {"name": "user", "key": USER},
                ]
            },
            "models": entries,
        }
    )
    with served(create_app(settings, kind.build)) as served_app:
        yield OnDemandGateway(served_app, kind)


def test_20_concurrent_first_requests_cause_one_load_and_all_answer_200(tmp_path):
    with on_demand_gateway(tmp_path, a={}) as gateway:
        gate = gateway.hold_load("a")
        with ThreadPoolExecutor(20) as pool:
            replies = [pool.submit(gateway.chat, "a") for _ in range(20)]
            gateway.wait_waiting("a", 20)
            assert gateway.loading("a")["state"] == "loading"
            gate.open()
            assert [reply.result() for reply in replies] == ["a answers"] * 20
        assert gateway.kind.journal.lines == ["load a", "loaded a"]
        metrics = httpx.get(gateway.url + "/metrics", timeout=10).text
    assert 'vlmgw_model_loads_total{model="a",outcome="loaded"} 1.0' in metrics


def test_a_full_queue_answers_503_model_loading_with_retry_after(tmp_path):
    with on_demand_gateway(tmp_path, a={"load_queue": 2}) as gateway:
        gate = gateway.hold_load("a")
        with ThreadPoolExecutor(2) as pool:
            queued = [pool.submit(gateway.chat, "a") for _ in range(2)]
            gateway.wait_waiting("a", 2)
            with pytest.raises(openai.APIStatusError) as refused:
                gateway.chat("a")
            gate.open()
            assert [reply.result() for reply in queued] == ["a answers"] * 2
    assert refused.value.status_code == 503 and refused.value.code == "model_loading"
    assert int(refused.value.response.headers["retry-after"]) >= 1


def test_load_timeout_answers_the_coded_503(tmp_path):
    with on_demand_gateway(tmp_path, a={"load_timeout": 0.5}) as gateway:
        gate = gateway.hold_load("a")
        with pytest.raises(openai.APIStatusError) as timed_out:
            gateway.chat("a")
        gate.open()
        wait_until(lambda: gateway.loading("a")["state"] == "loaded", "the load finished anyway")
        assert gateway.chat("a") == "a answers"
    assert timed_out.value.status_code == 503 and timed_out.value.code == "load_timeout"
    assert "retry-after" in timed_out.value.response.headers


def test_an_open_stream_holds_its_model_loaded_while_another_waits(tmp_path):
    with on_demand_gateway(tmp_path, a={}, b={}) as gateway:
        journal, a = gateway.kind.journal, gateway.kind.backends["a"]
        a.stream_gate.close()
        stream = gateway.client().chat.completions.create(model="a", messages=MESSAGES, stream=True)
        first = next(iter(stream))
        assert first.choices[0].delta.content == "first"
        b_reply: list[str] = []
        b_request = threading.Thread(target=lambda: b_reply.append(gateway.chat("b")))
        b_request.start()
        gateway.wait_waiting("b", 1)
        assert gateway.loading("a")["state"] == "loaded"
        assert "unload a" not in journal.lines and "load b" not in journal.lines
        a.stream_gate.open()
        rest = [chunk.choices[0].delta.content for chunk in stream if chunk.choices]
        b_request.join(60)
        assert rest == ["last"] and b_reply == ["b answers"]
        assert journal.lines == ["load a", "loaded a", "unload a", "load b", "loaded b"]


def test_idle_unload_unloads_and_the_next_request_loads_again(tmp_path):
    with on_demand_gateway(tmp_path, a={"idle_unload": 0.3}) as gateway:
        assert gateway.chat("a") == "a answers"
        wait_until(lambda: gateway.loading("a")["state"] == "unloaded", "unloaded when idle")
        assert gateway.chat("a") == "a answers"
        assert gateway.kind.journal.count("load a") == 2


def test_models_list_states_and_last_use_and_ready_holds_while_unloaded(tmp_path):
    with on_demand_gateway(tmp_path, a={}, b={}) as gateway:
        assert httpx.get(gateway.url + "/ready", timeout=10).status_code == 200
        gateway.chat("a")
        listing = httpx.get(gateway.url + "/v1/models", headers=_auth(USER), timeout=10).json()
        loading = {card["id"]: card["vlm_gateway"]["loading"] for card in listing["data"]}
        assert loading["a"]["state"] == "loaded" and loading["a"]["last_used"] is not None
        assert loading["b"]["state"] == "unloaded" and loading["b"]["last_used"] is None
        assert loading["a"]["load"] == "on_demand"


def test_load_and_unload_are_admin_only_controls(tmp_path):
    with on_demand_gateway(tmp_path, a={}) as gateway:
        refused = httpx.post(f"{gateway.url}/v1/models/a/load", headers=_auth(USER), timeout=10)
        assert refused.status_code == 403 and "admin" in refused.json()["error"]["message"]
        loaded = httpx.post(f"{gateway.url}/v1/models/a/load", headers=_auth(ADMIN), timeout=60)
        assert loaded.status_code == 200
        assert loaded.json()["vlm_gateway"]["loading"]["state"] == "loaded"
        unloaded = httpx.post(f"{gateway.url}/v1/models/a/unload", headers=_auth(ADMIN), timeout=60)
        assert unloaded.json()["vlm_gateway"]["loading"]["state"] == "unloaded"
        unknown = httpx.post(f"{gateway.url}/v1/models/zz/load", headers=_auth(ADMIN), timeout=10)
        assert unknown.status_code == 404
        assert gateway.kind.journal.lines == ["load a", "loaded a", "unload a"]


def test_a_client_that_leaves_while_its_model_loads_leaves_the_queue(tmp_path):
    with on_demand_gateway(tmp_path, a={"load_queue": 1}) as gateway:
        gate = gateway.hold_load("a")
        body = orjson.dumps({"model": "a", "messages": MESSAGES})
        port = int(gateway.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as leaving:
            head = (
                f"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {USER}"
                f"\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            )
            leaving.sendall(head.encode() + body)
            gateway.wait_waiting("a", 1)
        gateway.wait_waiting("a", 0)  # its place in the queue is free again
        with ThreadPoolExecutor(1) as pool:
            reply = pool.submit(gateway.chat, "a")
            gateway.wait_waiting("a", 1)
            gate.open()
            assert reply.result() == "a answers"


def test_a_batch_loads_its_on_demand_model_once(tmp_path):
    with on_demand_gateway(tmp_path, a={}) as gateway:
        client = gateway.client()
        lines = [
            {
                "custom_id": f"line-{index}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "a", "messages": MESSAGES},
            }
            for index in range(5)
        ]
        upload = b"\n".join(orjson.dumps(line) for line in lines)
        batch_input = client.files.create(file=("in.jsonl", upload), purpose="batch")
        batch = client.batches.create(
            input_file_id=batch_input.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        done = wait_until(
            lambda: (b := client.batches.retrieve(batch.id)).status == "completed" and b,
            "the batch completed",
        )
        assert done.request_counts.completed == 5
        assert gateway.kind.journal.lines == ["load a", "loaded a"]
