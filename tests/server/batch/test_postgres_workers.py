"""`vlm-gateway serve --workers 2` on the PostgreSQL batch store (a real throwaway cluster): a
batch sent through the official openai SDK's Files and Batches API, to whichever worker the
kernel hands each connection, completes with every custom_id answered exactly once. The
supervisor alone runs the batch: while the upstream holds the batch's requests at a gate the
test opens, every leased row is the supervisor's, and the workers hold no connection to the
database."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import openai
import psycopg
import pytest

from tests.server.batch.batch_support import (
    assert_each_line_answered_once,
    chat_line,
    jsonl,
    wait_final,
)
from tests.support.fake_upstream import FakeUpstream
from tests.support.polling import wait_until
from tests.support.workers_gateway import WorkersGateway

REQUESTS = 24
SLOTS = 4  # batch.concurrency_per_model


class GateUpstream(FakeUpstream):
    """Holds every chat request until open() (once open, answers at once); counts the held."""

    def __init__(self) -> None:
        super().__init__(record=False)
        self.held = 0
        self._count = threading.Lock()
        self._gate = threading.Event()

    async def _dispatch(self, req, chat, http11, keep, reader, writer) -> bool:
        with self._count:
            self.held += 1
        try:
            await asyncio.to_thread(self._gate.wait)
        finally:
            with self._count:
                self.held -= 1
        return await super()._dispatch(req, chat, http11, keep, reader, writer)

    def open(self) -> None:
        self._gate.set()


@pytest.fixture
def gateway(postgres_url, tmp_path):
    with GateUpstream() as upstream:
        model = {
            "name": "m",
            "backend": "openai",
            "base_url": upstream.base_url,
            "upstream_model": "ok",
        }
        config = {
            "access_log": False,
            "batch": {"store": postgres_url, "concurrency_per_model": SLOTS},
            "models": [model],
        }
        gateway = WorkersGateway(config, tmp_path)
        try:
            yield gateway, upstream
        finally:
            upstream.open()  # a failed test must not leave requests held
            gateway.stop()


def _lease_pids(db: psycopg.Connection, batch_id: str) -> Counter[int]:
    """Rows of the batch leased now, by the pid in their lease owner (host:pid:nonce)."""
    rows = db.execute(
        "SELECT lease_owner FROM vlmgw_rows WHERE batch_id = %s AND NOT done "
        "AND lease_owner IS NOT NULL",
        (batch_id,),
    )
    return Counter(int(owner.split(":")[-2]) for (owner,) in rows.fetchall())


def _connected_to(port: int, pids: list[int]) -> set[int]:
    """Those of `pids` holding a TCP connection to 127.0.0.1:`port`."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2].endswith(f":{port:04X}") and fields[3] == "01":  # ESTABLISHED
            inodes.add(f"socket:[{fields[9]}]")
    return {pid for pid in pids if inodes & _fd_targets(pid)}


def _fd_targets(pid: int) -> set[str]:
    targets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed since it was listed
            targets.add(os.readlink(fd))
    return targets


def test_two_workers_one_batch_on_postgresql(gateway, postgres_url):
    gateway, upstream = gateway
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    lines = [chat_line(f"req-{i:02d}", "m") for i in range(REQUESTS)]
    upload = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    supervisor = gateway.proc.pid

    with psycopg.connect(postgres_url, autocommit=True) as db:
        wait_until(lambda: upstream.held == SLOTS, "the batch's first rows held at the gate")
        assert _lease_pids(db, batch.id) == {supervisor: SLOTS}  # the rows are in PostgreSQL
        # Workers forward the Batch API to the supervisor: none of them opens the store.
        gateways = [supervisor, *gateway.workers()]
        connected = _connected_to(urlsplit(postgres_url).port or 5432, gateways)
        upstream.open()
        done = wait_final(client, batch.id, deadline_s=120)
        (stored,) = db.execute(
            "SELECT count(*) FROM vlmgw_results WHERE batch_id = %s", (batch.id,)
        ).fetchone() or (0,)

    assert done.status == "completed", done
    assert stored == REQUESTS
    assert connected == {supervisor}
    assert_each_line_answered_once(client, done, [f"req-{i:02d}" for i in range(REQUESTS)])
