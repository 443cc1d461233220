"""Checks on a batch input file (JSONL) before any work starts, with 1-based line numbers,
and the reader the runner uses afterwards. Both stream the file: nothing holds it whole."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from pydantic import ValidationError

from vlm_gateway.core.errors import loc_to_param
from vlm_gateway.core.protocol import ChatCompletionRequest, CompletionRequest
from vlm_gateway.server.batch.protocol import BatchError
from vlm_gateway.server.batch.store_base import InputRow

_BODY_MODELS: dict[str, type[ChatCompletionRequest | CompletionRequest]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}
MAX_REPORTED_ERRORS = 100


@dataclass(frozen=True)
class BatchLine:
    line: int
    custom_id: str
    model: str
    request: ChatCompletionRequest | CompletionRequest


@dataclass
class Validation:
    total: int
    errors: list[BatchError]
    models: list[str]


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield number, raw


def _check(number: int, raw: bytes, endpoint: str) -> BatchLine | BatchError:
    def error(code: str, message: str, param: str | None = None) -> BatchError:
        return BatchError(code=code, line=number, message=message, param=param)

    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return error("invalid_json", f"Line {number} is not valid JSON: {exc}.")
    if not isinstance(item, dict):
        return error("invalid_request", f"Line {number} must be a JSON object.")
    custom_id, body = item.get("custom_id"), item.get("body")
    if not isinstance(custom_id, str) or not custom_id:
        return error(
            "missing_required_parameter",
            f"Line {number}: 'custom_id' must be a non-empty string.",
            "custom_id",
        )
    if item.get("method") != "POST":
        return error("invalid_method", f"Line {number}: 'method' must be \"POST\".", "method")
    if item.get("url") != endpoint:
        return error(
            "invalid_url",
            f"Line {number}: 'url' must be the batch's endpoint "
            f"{endpoint!r}, got {item.get('url')!r}.",
            "url",
        )
    if not isinstance(body, dict):
        return error("invalid_request", f"Line {number}: 'body' must be an object.", "body")
    if body.get("stream"):
        return error(
            "invalid_request",
            f"Line {number}: streaming is not supported in batches; remove 'stream'.",
            "body.stream",
        )
    try:
        request = _BODY_MODELS[endpoint].model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = loc_to_param(("body", *first.get("loc", ())))
        return error("invalid_request", f"Line {number}: invalid '{param}': {first['msg']}.", param)
    return BatchLine(number, custom_id, request.model, request)


def validate_input(
    path: Path, endpoint: str, known_models: list[str], max_requests: int
) -> Validation:
    """Every line checked; the batch may run only if `errors` is empty."""
    errors: list[BatchError] = []
    seen: set[str] = set()
    models: dict[str, None] = {}
    total = 0
    for number, raw in _lines(path):
        total += 1
        result = _check(number, raw, endpoint)
        if isinstance(result, BatchLine):
            if result.custom_id in seen:
                result = BatchError(
                    code="duplicate_custom_id",
                    line=number,
                    param="custom_id",
                    message=f"Line {number}: custom_id {result.custom_id!r} "
                    "is used by an earlier line; each must be unique.",
                )
            elif result.model not in known_models:
                result = BatchError(
                    code="model_not_found",
                    line=number,
                    param="body.model",
                    message=f"Line {number}: the model {result.model!r} does "
                    f"not exist. Available: {', '.join(known_models)}.",
                )
            else:
                seen.add(result.custom_id)
                models[result.model] = None
        if isinstance(result, BatchError) and len(errors) < MAX_REPORTED_ERRORS:
            errors.append(result)
    if total == 0:
        errors.append(BatchError(code="empty_file", message="The input file has no requests."))
    elif total > max_requests:
        errors.append(
            BatchError(
                code="too_many_requests",
                message=f"The input file has {total} requests; the limit is {max_requests}.",
            )
        )
    return Validation(total, errors, list(models))


def read_requests(path: Path, endpoint: str, chunk: int = 256) -> Iterator[list[BatchLine]]:
    """The (already validated) requests, `chunk` at a time, in file order."""
    lines: list[BatchLine] = []
    for number, raw in _lines(path):
        result = _check(number, raw, endpoint)
        if isinstance(result, BatchLine):
            lines.append(result)
        if len(lines) >= chunk:
            yield lines
            lines = []
    if lines:
        yield lines


def input_rows(path: Path, endpoint: str) -> Iterator[InputRow]:
    """The (already validated) requests as rows for a shared queue, each with its raw line."""
    for number, raw in _lines(path):
        result = _check(number, raw, endpoint)
        if isinstance(result, BatchLine):
            yield InputRow(result.custom_id, number, result.model, raw)


def parse_line(number: int, raw: bytes, endpoint: str) -> BatchLine | BatchError:
    """One input line (a leased row's body) parsed as validation parsed it."""
    return _check(number, raw, endpoint)
