"""/v1/files: uploads for the Batch API, and the output files batches write. Each caller
sees only its own files (admins: all); vlm_gateway/server/batch/tenancy.py."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from vlm_gateway.core.errors import ConflictError, InvalidRequestError
from vlm_gateway.server.batch.multipart import receive_upload
from vlm_gateway.server.batch.protocol import FileDeleted, FileObject, ListPage
from vlm_gateway.server.batch.store_base import BatchStore
from vlm_gateway.server.batch.tenancy import own_file, visible_owner
from vlm_gateway.server.door.keys import caller_of
from vlm_gateway.server.openapi import multipart_upload
from vlm_gateway.server.route_helpers import json_response
from vlm_gateway.server.state import gateway_state

router = APIRouter()

_PURPOSES = ("batch",)
_UPLOAD_FORM = multipart_upload(
    {
        "file": {"type": "string", "format": "binary", "description": "JSONL, one request a line"},
        "purpose": {"type": "string", "enum": list(_PURPOSES)},
    },
    required=["file", "purpose"],
)


def _store(request: Request) -> BatchStore:
    return gateway_state(request).batch_store


@router.post("/v1/files", response_model=FileObject, openapi_extra=_UPLOAD_FORM)
async def create_file(request: Request) -> Response:
    store = _store(request)
    dest = store.upload_path()
    try:
        upload = await receive_upload(
            request, store.upload_path(), dest, gateway_state(request).settings.batch.max_file_bytes
        )
        purpose = upload.fields.get("purpose")
        if purpose not in _PURPOSES:
            raise InvalidRequestError(
                f"'purpose' must be one of {', '.join(_PURPOSES)}; got {purpose!r}.",
                param="purpose",
            )
        file = await store.add_file(dest, upload.filename, purpose, caller_of(request.scope).name)
    finally:
        dest.unlink(missing_ok=True)  # gone already unless the upload was refused
    return json_response(file.model_dump())


@router.get("/v1/files", response_model=ListPage)
async def list_files(
    request: Request,
    after: str | None = None,
    limit: int = Query(10000, ge=1, le=10000),
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> Response:
    owner = visible_owner(caller_of(request.scope))
    files, more = await _store(request).list_files(after, limit, order == "asc", purpose, owner)
    page = ListPage(
        data=[f.model_dump() for f in files],
        has_more=more,
        first_id=files[0].id if files else None,
        last_id=files[-1].id if files else None,
    )
    return json_response(page.model_dump())


@router.get("/v1/files/{file_id}", response_model=FileObject)
async def retrieve_file(request: Request, file_id: str) -> Response:
    file = await own_file(_store(request), caller_of(request.scope), file_id)
    return json_response(file.model_dump())


@router.get("/v1/files/{file_id}/content")
async def file_content(request: Request, file_id: str) -> Response:
    store = _store(request)
    file = await own_file(store, caller_of(request.scope), file_id)
    path = store.local_file(file_id)
    if path is None:  # in a shared store's database (PostgreSQL)
        return StreamingResponse(
            store.file_chunks(file_id),
            media_type="application/octet-stream",
            headers={
                "content-length": str(file.bytes),
                "content-disposition": f'attachment; filename="{file.filename}"',
            },
        )
    return FileResponse(path, media_type="application/octet-stream", filename=file.filename)


@router.delete("/v1/files/{file_id}", response_model=FileDeleted)
async def delete_file(request: Request, file_id: str) -> Response:
    store = _store(request)
    await own_file(store, caller_of(request.scope), file_id)
    if await store.file_in_use(file_id):
        raise ConflictError(
            f"The file {file_id} is the input of a batch that is still "
            "running; cancel the batch first.",
            param="file_id",
        )
    await store.delete_file(file_id)
    return json_response(FileDeleted(id=file_id).model_dump())
