"""The Files and Batch APIs end to end: a real gateway process, the official SDK, and the
fake upstream (tests/support/fake_upstream.py) for fast, fault-injecting backends."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from openai.types import Batch, FileObject
from openai.types.chat import ChatCompletion

from tests.server.batch.batch_support import chat_line, jsonl, result_lines, wait_final
from tests.support.fake_upstream import FakeUpstream
from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess

MODELS = ("ok", "fault-400", "fault-stall")
SLOTS = 4  # batch.concurrency_per_model
LIVE = "live"  # the one message GatedUpstream answers at once


class GatedUpstream(FakeUpstream):
    """Holds every chat request until release(its last message), except those whose message
    is LIVE, which are answered at once ("hello"). For each request it notes how many others
    it found held when it arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[str] = []
        self.held_on_arrival: dict[str, int] = {}
        self._gates: dict[str, asyncio.Event] = {}

    async def _dispatch(
        self, req: dict, chat: bool, http11: bool, keep: bool, reader, writer
    ) -> bool:
        tag = req["messages"][-1]["content"]
        if tag != LIVE:
            gate = self._gates.setdefault(tag, asyncio.Event())
            with self._lock:
                self.held_on_arrival[tag] = len(self.held)
                self.held.append(tag)
            try:
                await gate.wait()
            finally:
                with self._lock:
                    self.held.remove(tag)
        return await super()._dispatch(req, chat, http11, keep, reader, writer)

    def holding(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(tag for tag in self.held if tag.startswith(prefix))

    def release(self, *tags: str) -> None:
        for tag in tags:
            self._loop.call_soon_threadsafe(self._gates.setdefault(tag, asyncio.Event()).set)


@pytest.fixture(scope="module")
def gated():
    with GatedUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(upstream, gated, tmp_path_factory):
    work = tmp_path_factory.mktemp("batch-api")
    config = {
        "data_dir": str(work / "data"),
        "batch": {"concurrency_per_model": SLOTS, "max_file_bytes": 65536},
        "models": [
            {
                "name": name,
                "backend": "openai",
                "base_url": upstream.base_url,
                "upstream_model": name,
                "timeout": 20,
            }
            for name in MODELS
        ]
        + [
            {
                "name": "held",
                "backend": "openai",
                "base_url": gated.base_url,
                "upstream_model": "ok",
                "timeout": 60,
            }
        ],
    }
    with GatewayProcess(config, work) as proc:
        yield proc


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def upload(client: openai.OpenAI, lines: list[dict]) -> FileObject:
    return client.files.create(file=("input.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")


def test_files_round_trip(client):
    data = jsonl([chat_line("a", "ok")])
    created = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    assert (created.bytes, created.filename, created.purpose) == (len(data), "in.jsonl", "batch")
    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).content == data
    assert created.id in [f.id for f in client.files.list()]
    assert client.files.delete(created.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)


def test_upload_needs_purpose_batch(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("in.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    assert caught.value.body["param"] == "purpose"


def test_upload_limits_and_malformed_forms(client, gateway):
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.jsonl", io.BytesIO(b"x" * 70000)), purpose="batch")
    assert caught.value.status_code == 413 and caught.value.body["code"] == "file_too_large"
    no_file = httpx.post(gateway.url + "/v1/files", files={"purpose": (None, "batch")})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    not_multipart = httpx.post(gateway.url + "/v1/files", data={"purpose": "batch"})
    assert not_multipart.status_code == 400
    assert "multipart/form-data" in not_multipart.json()["error"]["message"]


def test_batch_completes_with_output_and_error_files(client, upstream):
    lines = [chat_line(f"ok-{i}", "ok") for i in range(20)]
    lines += [chat_line(f"bad-{i}", "fault-400") for i in range(3)]
    file = upload(client, lines)
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "t1"},
    )
    assert batch.status == "validating" and batch.metadata == {"job": "t1"}
    assert batch.completion_window == "24h" and batch.expires_at == batch.created_at + 24 * 3600
    batch = wait_final(client, batch.id)
    assert isinstance(batch, Batch) and batch.status == "completed"
    assert (
        batch.request_counts.total,
        batch.request_counts.completed,
        batch.request_counts.failed,
    ) == (23, 20, 3)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    output = result_lines(client, batch.output_file_id)
    errors = result_lines(client, batch.error_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(f"ok-{i}" for i in range(20))
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        ChatCompletion.model_validate(line["response"]["body"])
    assert sorted(e["custom_id"] for e in errors) == ["bad-0", "bad-1", "bad-2"]
    assert all(e["response"]["status_code"] == 400 and e["error"]["message"] for e in errors)


def test_bad_lines_fail_the_batch_with_line_numbers(client):
    lines = [
        jsonl([chat_line("a", "ok")]),
        b"{not json}\n",
        jsonl([chat_line("a", "ok")]),
        jsonl([chat_line("c", "no-such-model")]),
        jsonl([{**chat_line("d", "ok"), "url": "/v1/embeddings"}]),
    ]
    file = client.files.create(file=("bad.jsonl", io.BytesIO(b"".join(lines))), purpose="batch")
    batch = wait_final(
        client,
        client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id,
    )
    assert batch.status == "failed" and batch.failed_at
    found = {(e.line, e.code) for e in batch.errors.data}
    assert found == {
        (2, "invalid_json"),
        (3, "duplicate_custom_id"),
        (4, "model_not_found"),
        (5, "invalid_url"),
    }
    assert batch.output_file_id is None


def test_create_rejects_unknown_file_and_endpoint(client):
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    file = upload(client, [chat_line("a", "ok")])
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(
            input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h"
        )
    assert caught.value.body["param"] == "endpoint"


def test_list_pages_newest_first(client):
    file = upload(client, [chat_line("a", "ok")])
    ids = [
        client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(3)
    ]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    second = client.batches.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == ids[0]
    for batch_id in ids:
        wait_final(client, batch_id)


def test_cancel_keeps_what_is_done(client):
    file = upload(
        client,
        [chat_line("fast", "ok")] + [chat_line(f"stall-{i}", "fault-stall") for i in range(6)],
    )
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait_until(
        lambda: client.batches.retrieve(batch.id).request_counts.completed >= 1,
        "the fast request done",
    )
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    batch = wait_final(client, batch.id, deadline_s=10)
    assert batch.status == "cancelled" and batch.cancelled_at
    assert [o["custom_id"] for o in result_lines(client, batch.output_file_id)] == ["fast"]
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(
            wait_final(
                client,
                client.batches.create(
                    input_file_id=upload(client, [chat_line("x", "ok")]).id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                ).id,
            ).id
        )


def test_expired_window_keeps_partial_output(client):
    file = upload(client, [chat_line("fast", "ok"), chat_line("slow", "fault-stall")])
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="2s"
    )
    assert batch.expires_at == batch.created_at + 2
    batch = wait_final(client, batch.id, deadline_s=15)
    assert batch.status == "expired" and batch.expired_at
    assert [o["custom_id"] for o in result_lines(client, batch.output_file_id)] == ["fast"]
    errors = result_lines(client, batch.error_file_id)
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [("slow", "batch_expired")]


def test_live_request_is_served_while_a_batch_runs(client, gated):
    """Live first: a batch holding every slot of a model doesn't delay a live request to it,
    and a batch request only starts where live requests leave a slot free."""
    lines = [chat_line(f"b-{i}", "held", content=f"b-{i}") for i in range(SLOTS + 2)]
    batch = client.batches.create(
        input_file_id=upload(client, lines).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    first = [f"b-{i}" for i in range(SLOTS)]
    wait_until(lambda: gated.holding("b-") == first, "the batch holding every slot")

    live = [{"role": "user", "content": LIVE}]
    reply = client.chat.completions.create(model="held", messages=live, timeout=30)
    assert reply.choices[0].message.content == "hello"
    assert gated.holding("b-") == first  # answered while the whole batch was still stalled

    # A live request in flight when a batch request ends takes that slot: the batch must not
    # start another until the live request is done.
    held_live = [{"role": "user", "content": "live-held"}]
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(
            client.chat.completions.create, model="held", messages=held_live, timeout=30
        )
        wait_until(lambda: gated.holding("live"), "the live request reaching the upstream")
        gated.release("b-0")
        wait_until(
            lambda: client.batches.retrieve(batch.id).request_counts.completed == 1,
            "b-0 recorded as done",
        )
        gated.release("live-held")
        assert in_flight.result().choices[0].message.content == "hello"
    refilled = [f"b-{i}" for i in range(1, SLOTS + 1)]
    wait_until(lambda: gated.holding("b-") == refilled, "the batch taking the freed slot")
    crowded = {
        tag: n for tag, n in gated.held_on_arrival.items() if tag.startswith("b-") and n >= SLOTS
    }
    assert not crowded, f"batch requests started with every slot taken: {crowded}"

    client.batches.cancel(batch.id)
    assert wait_final(client, batch.id, deadline_s=10).status == "cancelled"
    gated.release(*(f"b-{i}" for i in range(SLOTS + 2)))


def test_completions_endpoint_batch(client):
    lines = [
        {
            "custom_id": f"p{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "ok", "prompt": "Once upon", "max_tokens": 4},
        }
        for i in range(3)
    ]
    batch = client.batches.create(
        input_file_id=upload(client, lines).id, endpoint="/v1/completions", completion_window="24h"
    )
    batch = wait_final(client, batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 3
    bodies = [o["response"]["body"] for o in result_lines(client, batch.output_file_id)]
    assert all(b["object"] == "text_completion" and b["model"] == "ok" for b in bodies)
