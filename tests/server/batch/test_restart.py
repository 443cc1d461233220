"""kill -9 of the gateway in the middle of a batch, then a restart on the same data dir: the
batch resumes and every custom_id is in the output or error file exactly once.

The upstream answers the first ANSWERED rows and holds the rest (tests/support/gated_upstream.py),
so the kill lands with rows in flight however fast the machine runs the batch."""

from __future__ import annotations

import io
from collections import Counter

import openai

from tests.server.batch.batch_support import chat_line, jsonl, result_lines, wait_final
from tests.support.gated_upstream import GatedUpstream
from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess

TOTAL = 1500
ANSWERED = 100  # rows the upstream answers before its gate holds the rest


def test_batch_survives_kill_9(tmp_path):
    with GatedUpstream(answer_first=ANSWERED) as upstream:
        config = {
            "data_dir": str(tmp_path / "data"),
            "batch": {"concurrency_per_model": 2},
            "models": [
                {
                    "name": name,
                    "backend": "openai",
                    "base_url": upstream.base_url,
                    "upstream_model": name,
                }
                for name in ("ok", "fault-400")
            ],
        }
        gateway = GatewayProcess(config, tmp_path).start()
        try:
            client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
            lines = [chat_line(f"r{i}", "fault-400" if i % 10 == 0 else "ok") for i in range(TOTAL)]
            file = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
            batch = client.batches.create(
                input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
            )

            def done_if_answered() -> int | None:
                counts = client.batches.retrieve(batch.id).request_counts
                done = counts.completed + counts.failed
                return done if done >= ANSWERED else None

            done = wait_until(done_if_answered, f"{ANSWERED} requests done")
            # Both models' rows in flight, held: the kill cannot come after the batch's end.
            wait_until(lambda: upstream.held >= 2, "rows held at the upstream")
            gateway.proc.kill()  # SIGKILL: no shutdown code runs
            gateway.proc.wait()
            assert done < TOTAL, "the batch finished before the kill"
            upstream.release()  # the held rows' connections died with the gateway

            gateway.start()  # same port, config and data dir
            batch = wait_final(client, batch.id, deadline_s=120)
            seen = Counter(line["custom_id"] for line in result_lines(client, batch.output_file_id))
            seen.update(line["custom_id"] for line in result_lines(client, batch.error_file_id))
        finally:
            gateway.stop()
    assert batch.status == "completed"
    assert set(seen) == {f"r{i}" for i in range(TOTAL)}
    assert max(seen.values()) == 1
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1350, 150)
