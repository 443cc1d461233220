"""OpenAI's Files and Batch objects, as the official SDK's `FileObject` and `Batch` types
name them. Kept apart from gateway/protocol.py (chat) so that module stays small."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
ACTIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
# OpenAI accepts only "24h"; shorter windows (e.g. "90s", "30m") are our extension.
_WINDOW = re.compile(r"(\d+)([smh])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def window_seconds(window: str) -> int:
    match = _WINDOW.fullmatch(window)
    if match is None:
        raise ValueError("must look like '24h' (or a number of s, m or h)")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class FileObject(BaseModel):
    id: str
    bytes: int
    created_at: int
    filename: str
    object: Literal["file"] = "file"
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileDeleted(BaseModel):
    id: str
    deleted: bool = True
    object: Literal["file"] = "file"


class BatchError(BaseModel):
    code: str | None = None
    line: int | None = None
    message: str | None = None
    param: str | None = None


class BatchErrors(BaseModel):
    data: list[BatchError] = Field(default_factory=list)
    object: Literal["list"] = "list"


class BatchRequestCounts(BaseModel):
    completed: int = 0
    failed: int = 0
    total: int = 0


class Batch(BaseModel):
    id: str
    completion_window: str
    created_at: int
    endpoint: str
    input_file_id: str
    object: Literal["batch"] = "batch"
    status: BatchStatus
    cancelled_at: int | None = None
    cancelling_at: int | None = None
    completed_at: int | None = None
    error_file_id: str | None = None
    errors: BatchErrors | None = None
    expired_at: int | None = None
    expires_at: int | None = None
    failed_at: int | None = None
    finalizing_at: int | None = None
    in_progress_at: int | None = None
    metadata: dict[str, str] | None = None
    model: str | None = None
    output_file_id: str | None = None
    request_counts: BatchRequestCounts = Field(default_factory=BatchRequestCounts)


MetadataKey = Annotated[str, Field(max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]


class BatchCreateRequest(BaseModel):
    """POST /v1/batches."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: Annotated[str, Field(min_length=1)]
    endpoint: Literal["/v1/chat/completions", "/v1/completions"]
    completion_window: str = "24h"
    metadata: dict[MetadataKey, MetadataValue] | None = None
    output_expires_after: dict[str, Any] | None = None  # accepted, not enforced

    @field_validator("completion_window")
    @classmethod
    def _window(cls, value: str) -> str:
        window_seconds(value)
        return value

    @field_validator("metadata")
    @classmethod
    def _few_keys(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and len(value) > 16:
            raise ValueError("at most 16 keys")
        return value


class ListPage(BaseModel):
    """A cursor page, as the SDK's SyncCursorPage reads it."""

    object: Literal["list"] = "list"
    data: list[Any]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
