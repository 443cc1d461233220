"""Helpers shared by the Batch API tests: input files, waiting, reading result files."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from pathlib import Path

import openai

FINAL = ("completed", "failed", "expired", "cancelled")


def chat_line(custom_id: str, model: str, content="say hi", max_tokens: int = 8) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": content}],
        },
    }


def jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def wait_final(client: openai.OpenAI, batch_id: str, deadline_s: float = 60):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in FINAL:
            return batch
        time.sleep(0.05)
    raise TimeoutError(f"batch {batch_id} not finished in {deadline_s} s: {batch}")


def result_lines(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_each_line_answered_once(client: openai.OpenAI, done, custom_ids: list[str]) -> None:
    """Every custom_id written exactly once across the output and error files, each a 200,
    and the batch's counts saying so."""
    output = result_lines(client, done.output_file_id)
    errors = result_lines(client, done.error_file_id)
    written = Counter(line["custom_id"] for line in output + errors)
    assert written == Counter(custom_ids)  # each exactly once
    assert errors == [] and all(line["response"]["status_code"] == 200 for line in output)
    counts = done.request_counts
    total = len(custom_ids)
    assert (counts.total, counts.completed, counts.failed) == (total, total, 0)


# The store's tables before files and batches had owners (vlm_gateway/server/batch/store.py at
# commit 589b5cc), for the in-place upgrade tests.
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    batch_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    ok INTEGER NOT NULL,
    model TEXT NOT NULL,
    line BLOB NOT NULL,
    PRIMARY KEY (batch_id, custom_id)
) WITHOUT ROWID;
"""
OLD_FILE_ID = "file-0123456789abcdef01234567"
OLD_BATCH_ID = "batch_0123456789abcdef01234567"


def write_old_store(data_dir: Path) -> bytes:
    """A store as the previous version left it: one input file and one completed batch, no
    owners. Returns the file's content."""
    content = jsonl([chat_line("old", "ok")])
    (data_dir / "files").mkdir(parents=True, exist_ok=True)
    (data_dir / "files" / OLD_FILE_ID).write_bytes(content)
    file = {
        "id": OLD_FILE_ID,
        "bytes": len(content),
        "created_at": 1_700_000_000,
        "filename": "old.jsonl",
        "object": "file",
        "purpose": "batch",
        "status": "processed",
    }
    batch = {
        "id": OLD_BATCH_ID,
        "completion_window": "24h",
        "created_at": 1_700_000_000,
        "endpoint": "/v1/chat/completions",
        "input_file_id": OLD_FILE_ID,
        "object": "batch",
        "status": "completed",
        "completed_at": 1_700_000_100,
        "request_counts": {"completed": 0, "failed": 0, "total": 1},
    }
    db = sqlite3.connect(data_dir / "vlm-gateway.sqlite3")
    with db:
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO files (id, doc) VALUES (?, ?)", (OLD_FILE_ID, json.dumps(file)))
        db.execute(
            "INSERT INTO batches (id, status, doc) VALUES (?, ?, ?)",
            (OLD_BATCH_ID, "completed", json.dumps(batch)),
        )
    db.close()
    return content
