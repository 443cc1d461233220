"""Helpers shared by the Batch API tests: input files, waiting, reading result files."""

from __future__ import annotations

import json
import time

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
