"""/docs served whole by the gateway: the Swagger UI page and its script, styles and favicon.

FastAPI's own page loads Swagger UI from a public CDN and its favicon from fastapi.tiangolo.com:
behind a firewall the page stays blank, and every visit tells a third party. The files come
from the pinned `fastapi-swagger` package instead (a copy of swagger-ui-dist, released when
Swagger UI is; docs/operations.md, "API docs"); only its files are used, not its FastAPI patch.

The assets live under /docs/assets/ and follow the API-key rule of /docs itself
(`docs_public_paths`): public when /docs is listed in `security.public_paths`, keyed otherwise.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from importlib import resources

import fastapi_swagger.resources
from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html

from vlm_gateway.core.errors import NotFoundError

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
# name -> media type: the files of swagger-ui-dist the page loads.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
# Revalidated daily with the ETag: an upgrade's new Swagger UI shows within a day without any
# version in the URL (which the exact-match public paths would have to follow).
CACHE_CONTROL = "public, max-age=86400"


def docs_public_paths(public_paths: Iterable[str]) -> list[str]:
    """`public_paths` with the assets added when /docs is among them: one rule for the page
    and what it loads, while the public list stays matched exactly."""
    paths = list(public_paths)
    if DOCS_PATH in paths:
        paths += [
            f"{ASSETS_PATH}/{name}" for name in ASSETS if f"{ASSETS_PATH}/{name}" not in paths
        ]
    return paths


def install_api_docs(app: FastAPI, openapi_url: str) -> None:
    """The page at /docs and its assets; nothing at all when the app is built without docs."""

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui_page(request: Request) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a path-prefixing proxy
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-32x32.png",
        )

    @app.get(ASSETS_PATH + "/{name}", include_in_schema=False)
    async def swagger_ui_asset(name: str, request: Request) -> Response:
        if name not in ASSETS:
            raise NotFoundError(f"No route GET {request.url.path}.")
        body, etag = _asset(name)
        headers = {"cache-control": CACHE_CONTROL, "etag": etag}
        if _matches(request.headers.get("if-none-match", ""), etag):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=ASSETS[name], headers=headers)


@functools.cache
def _asset(name: str) -> tuple[bytes, str]:
    """The file's bytes and strong ETag, read on first use (the bundle is 1.7 MB; a gateway
    whose /docs nobody opens never holds it)."""
    body = (resources.files(fastapi_swagger.resources) / name).read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _matches(if_none_match: str, etag: str) -> bool:
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in tags or "*" in tags
