"""The OpenAPI document (/openapi.json, shown at /docs) with the real request bodies.

The routes read their bodies by hand (`route_helpers.parse_body`: one 400 envelope naming the
field, no FastAPI validation shapes), so FastAPI sees no body parameter and would document none.
Each such route declares its body with `openapi_extra=json_body(Model)`: the model's JSON schema
in place, its nested models under `$defs` with references already pointing into
`#/components/schemas/`. `DocumentedApp.openapi` then moves those `$defs` into the components,
where the references resolve.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

_COMPONENT_REF = "#/components/schemas/{model}"


def json_body(model: type[BaseModel], description: str = "") -> dict[str, Any]:
    """`openapi_extra` for a route that parses a JSON body of `model` itself."""
    schema = model.model_json_schema(ref_template=_COMPONENT_REF)
    body: dict[str, Any] = {"required": True, "content": {"application/json": {"schema": schema}}}
    if description:
        body["description"] = description
    return {"requestBody": body}


def streamed_or_json(description: str) -> dict[str, Any]:
    """`openapi_extra` responses for a route that answers JSON, or SSE when `stream` is true."""
    return {
        "responses": {
            "200": {
                "description": description,
                "content": {"application/json": {}, "text/event-stream": {}},
            }
        }
    }


def multipart_upload(fields: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """`openapi_extra` for a `multipart/form-data` upload read by hand (server/batch/multipart)."""
    schema = {"type": "object", "properties": fields, "required": required}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


class DocumentedApp(FastAPI):
    """FastAPI whose OpenAPI document resolves the `$defs` of bodies declared with json_body."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            # A copy: FastAPI's document shares its dicts with the routes' openapi_extra, and
            # the routers (so their openapi_extra) serve every app built in this process.
            document = copy.deepcopy(super().openapi())
            _move_defs_to_components(document)
            self.openapi_schema = document
        return self.openapi_schema


def _move_defs_to_components(document: dict[str, Any]) -> None:
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            body = operation.get("requestBody", {})
            for media in body.get("content", {}).values():
                for name, schema in media.get("schema", {}).pop("$defs", {}).items():
                    components.setdefault(name, schema)
