"""/v1/batches: create, retrieve, list, cancel. The work itself is the BatchRunner's. Each
caller sees only its own batches and files (admins: all); vlm_gateway/server/batch/tenancy.py."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query, Request, Response

from vlm_gateway.core.errors import ConflictError, InvalidRequestError
from vlm_gateway.server.batch.protocol import (
    ACTIVE_STATUSES,
    Batch,
    BatchCreateRequest,
    ListPage,
    window_seconds,
)
from vlm_gateway.server.batch.store_base import BatchStore, new_id
from vlm_gateway.server.batch.tenancy import own_batch, own_file, visible_owner
from vlm_gateway.server.door.keys import caller_of
from vlm_gateway.server.openapi import json_body
from vlm_gateway.server.route_helpers import json_response, parse_body
from vlm_gateway.server.state import gateway_state

router = APIRouter()


def _store(request: Request) -> BatchStore:
    return gateway_state(request).batch_store


@router.post("/v1/batches", response_model=Batch, openapi_extra=json_body(BatchCreateRequest))
async def create_batch(request: Request) -> Response:
    body = await parse_body(request, BatchCreateRequest)
    store = _store(request)
    caller = caller_of(request.scope)
    file = await own_file(store, caller, body.input_file_id, param="input_file_id")
    if file.purpose != "batch":
        raise InvalidRequestError(
            f"The file {file.id} has purpose {file.purpose!r}; batches "
            "need a file uploaded with purpose 'batch'.",
            param="input_file_id",
        )
    now = int(time.time())
    batch = Batch(
        id=new_id("batch_"),
        completion_window=body.completion_window,
        created_at=now,
        endpoint=body.endpoint,
        input_file_id=file.id,
        status="validating",
        metadata=body.metadata,
        expires_at=now + window_seconds(body.completion_window),
    )
    await store.add_batch(batch, caller.name)
    gateway_state(request).batch_runner.submit(batch.id)
    return json_response(batch.model_dump())


@router.get("/v1/batches", response_model=ListPage)
async def list_batches(
    request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100)
) -> Response:
    owner = visible_owner(caller_of(request.scope))
    batches, more = await _store(request).list_batches(after, limit, owner)
    page = ListPage(
        data=[b.model_dump() for b in batches],
        has_more=more,
        first_id=batches[0].id if batches else None,
        last_id=batches[-1].id if batches else None,
    )
    return json_response(page.model_dump())


@router.get("/v1/batches/{batch_id}", response_model=Batch)
async def retrieve_batch(request: Request, batch_id: str) -> Response:
    batch = await own_batch(_store(request), caller_of(request.scope), batch_id)
    return json_response(batch.model_dump())


@router.post("/v1/batches/{batch_id}/cancel", response_model=Batch)
async def cancel_batch(request: Request, batch_id: str) -> Response:
    batch = await own_batch(_store(request), caller_of(request.scope), batch_id)
    if batch.status in ("cancelling", "cancelled"):
        return json_response(batch.model_dump())
    if batch.status not in ACTIVE_STATUSES or batch.status == "finalizing":
        raise ConflictError(f"Cannot cancel a batch with status '{batch.status}'.")
    batch = await gateway_state(request).batch_runner.cancel(batch_id)
    return json_response(batch.model_dump())
