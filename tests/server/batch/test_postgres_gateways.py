"""Many gateways on one batch queue (issue 17's must-show): three `vlm-gateway serve` processes
on one PostgreSQL database (a real throwaway cluster), each with its own empty data_dir, in
front of a fake upstream that answers the first ANSWERED requests and holds the rest until the
test opens its gate (tests/support/gated_upstream.py). One batch of 300 requests goes in
through the official openai SDK; one gateway is killed with SIGKILL while it holds leased rows,
held upstream, so the kill lands mid-batch however fast the machine is. Every custom_id comes
out exactly once across the output and error files, and the batch completes, read back
through a surviving gateway."""

from __future__ import annotations

import io
import os
import signal

import openai
import psycopg
import pytest

from tests.server.batch.batch_support import (
    assert_each_line_answered_once,
    chat_line,
    jsonl,
    wait_final,
)
from tests.support.gated_upstream import GatedUpstream
from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess

REQUESTS = 300
ANSWERED = 30  # requests the upstream answers before its gate holds the rest
SLOTS = 4  # batch.concurrency_per_model, per gateway
LEASE_S = 2.0  # batch.lease_seconds: the killed gateway's rows are free again after this


@pytest.fixture
def upstream():
    with GatedUpstream(answer_first=ANSWERED) as gated:
        yield gated


@pytest.fixture
def gateways(postgres_url, tmp_path, upstream):
    procs = []
    try:
        for n in range(3):
            work = tmp_path / f"gw{n}"
            work.mkdir()
            config = {
                "data_dir": str(work / "data"),  # nothing shared on disk
                "access_log": False,
                "batch": {
                    "store": postgres_url,
                    "concurrency_per_model": SLOTS,
                    "lease_seconds": LEASE_S,
                },
                "models": [
                    {
                        "name": "m",
                        "backend": "openai",
                        "base_url": upstream.base_url,
                        "upstream_model": "ok",
                        "timeout": 30,
                    }
                ],
            }
            procs.append(GatewayProcess(config, work).start(wait_ready=False))
        for proc in procs:
            wait_until(lambda p=proc: _ready(p), f"gateway {proc.url} ready", 60)
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def _ready(proc: GatewayProcess) -> bool:
    import httpx

    try:
        return httpx.get(proc.url + "/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _leases(db: psycopg.Connection, batch_id: str) -> tuple[int, set[int]]:
    """(results committed, pids of the gateways holding leased rows now)."""
    done = db.execute("SELECT count(*) FROM vlmgw_results WHERE batch_id = %s", (batch_id,))
    (results,) = done.fetchone() or (0,)
    owners = db.execute(
        "SELECT DISTINCT lease_owner FROM vlmgw_rows WHERE batch_id = %s AND NOT done "
        "AND lease_owner IS NOT NULL",
        (batch_id,),
    )
    return results, {int(owner.split(":")[-2]) for (owner,) in owners.fetchall()}


def test_three_gateways_one_batch_survives_kill_9(gateways, postgres_url, upstream):
    first, victim, survivor = gateways
    client = openai.OpenAI(base_url=first.url + "/v1", api_key="unused", max_retries=0)
    lines = [chat_line(f"req-{i:03d}", "m") for i in range(REQUESTS)]
    upload = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    pids = {proc.proc.pid for proc in gateways}
    seen: set[int] = set()  # the gateways seen holding rows of this batch

    with psycopg.connect(postgres_url, autocommit=True) as db:

        def midway() -> bool:
            results, holders = _leases(db, batch.id)
            seen.update(holders)
            # Some rows done, every slot of every gateway held upstream, the victim's leases
            # taken: the kill lands mid-batch, with rows in flight.
            held = upstream.held == 3 * SLOTS
            return results >= ANSWERED and held and victim.proc.pid in holders

        wait_until(midway, "every gateway's rows held, the batch part done", 60, 0.02)
        os.killpg(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        results_at_kill, _ = _leases(db, batch.id)
        upstream.release()

    reader = openai.OpenAI(base_url=survivor.url + "/v1", api_key="unused", max_retries=0)
    done = wait_final(reader, batch.id, deadline_s=120)
    assert done.status == "completed", done
    assert results_at_kill < REQUESTS  # the kill landed before the end
    assert seen == pids  # the batch fanned out over all three gateways
    assert_each_line_answered_once(reader, done, [f"req-{i:03d}" for i in range(REQUESTS)])
    assert client.batches.retrieve(batch.id).status == "completed"  # the same from the first
