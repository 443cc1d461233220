"""Input-file checks before a batch runs: every problem with its 1-based line number."""

from __future__ import annotations

from tests.server.batch.batch_support import chat_line, jsonl
from vlm_gateway.server.batch.validation import read_requests, validate_input

ENDPOINT = "/v1/chat/completions"


def _validate(tmp_path, data: bytes, max_requests: int = 100):
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    return validate_input(path, ENDPOINT, ["m"], max_requests)


def test_good_file_counts_requests_and_skips_blank_lines(tmp_path):
    data = jsonl([chat_line("a", "m")]) + b"\n" + jsonl([chat_line("b", "m")])
    result = _validate(tmp_path, data)
    assert (result.total, result.errors, result.models) == (2, [], ["m"])
    chunks = list(read_requests(tmp_path / "in.jsonl", ENDPOINT, chunk=1))
    assert [[line.line for line in chunk] for chunk in chunks] == [[1], [3]]


def test_each_problem_names_its_line_and_param(tmp_path):
    bad_body = chat_line("c", "m")
    bad_body["body"]["temperature"] = 9
    streaming = chat_line("d", "m")
    streaming["body"]["stream"] = True
    lines = [
        b"[1, 2]\n",
        jsonl([{**chat_line("a", "m"), "method": "GET"}]),
        jsonl([bad_body]),
        jsonl([streaming]),
        jsonl([{"method": "POST"}]),
    ]
    result = _validate(tmp_path, b"".join(lines))
    got = [(e.line, e.code, e.param) for e in result.errors]
    assert got == [
        (1, "invalid_request", None),
        (2, "invalid_method", "method"),
        (3, "invalid_request", "body.temperature"),
        (4, "invalid_request", "body.stream"),
        (5, "missing_required_parameter", "custom_id"),
    ]
    assert all(f"Line {e.line}" in e.message for e in result.errors)


def test_empty_and_oversized_files(tmp_path):
    assert [e.code for e in _validate(tmp_path, b"\n\n").errors] == ["empty_file"]
    many = jsonl([chat_line(f"r{i}", "m") for i in range(3)])
    assert [e.code for e in _validate(tmp_path, many, max_requests=2).errors] == [
        "too_many_requests"
    ]
