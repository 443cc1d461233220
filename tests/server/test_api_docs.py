"""/docs works with loopback as the only network: a real headless Chromium renders the page
the gateway (a real uvicorn server) serves, every request it makes stays on the gateway, and
the check is shown to catch FastAPI's CDN page. Then the assets over plain HTTP: caching,
unknown names, and the API-key rule they share with /docs."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.openapi.docs import get_swagger_ui_html

from tests.support.chromium import load_offline, off_loopback
from tests.support.processes import GatewayProcess, free_port
from vlm_gateway.server.api_docs import ASSETS, ASSETS_PATH, docs_public_paths

KEY = "sk-docs-assets-0123456789"
ASSET_PATHS = [f"{ASSETS_PATH}/{name}" for name in ASSETS]
PAGE_ASSETS = [f"{ASSETS_PATH}/swagger-ui-bundle.js", f"{ASSETS_PATH}/swagger-ui.css"]
SOME_OPERATIONS = {"/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/batches"}


def _config(work, **top) -> dict:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: no request goes out
    model = {"name": "m", "backend": "openai", "base_url": dead}
    return {"data_dir": str(work / "data"), **top, "models": [model]}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("api-docs")
    with GatewayProcess(_config(work), work).start(wait_ready=False) as gateway:
        yield gateway


class _Operations(HTMLParser):
    """The paths of the operation blocks Swagger UI rendered (`.opblock .opblock-summary-path`)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = 0
        self.paths: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        classes = (found.get("class") or "").split()
        self.blocks += "opblock" in classes
        if "opblock-summary-path" in classes and found.get("data-path"):
            self.paths.add(found["data-path"])


def _operations(dom: str) -> _Operations:
    parser = _Operations()
    parser.feed(dom)
    return parser


def test_docs_render_in_a_browser_with_only_loopback(gateway, tmp_path):
    load = load_offline(gateway.port, "/docs", tmp_path)
    operations = _operations(load.dom)
    assert operations.paths >= SOME_OPERATIONS
    assert operations.blocks >= len(SOME_OPERATIONS)
    assert off_loopback(load, gateway.port) == []
    # The favicon is fetched after the load, sometimes after --dump-dom has quit: not required
    # here; test_the_page_names_no_other_site covers its URL.
    requested = {urlsplit(url).path for url in load.page_urls}
    assert {"/docs", "/openapi.json", *PAGE_ASSETS} <= requested


@contextlib.contextmanager
def _static_server(pages: dict[str, tuple[str, bytes]]) -> Iterator[int]:
    """path -> (content type, body) on a free loopback port."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            content_type, body = pages.get(self.path, ("text/plain", b"not found"))
            self.send_response(200 if self.path in pages else 404)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_the_check_fails_fastapis_cdn_page(gateway, tmp_path):
    """FastAPI's own page, as the gateway served it before, with the same document: blank, and
    its requests to the CDN are reported (its favicon's too, when fetched before the dump)."""
    cdn_page = get_swagger_ui_html(openapi_url="/openapi.json", title="vlm-gateway").body
    document = httpx.get(gateway.url + "/openapi.json").content
    pages = {
        "/docs": ("text/html", bytes(cdn_page)),
        "/openapi.json": ("application/json", document),
    }
    with _static_server(pages) as port:
        load = load_offline(port, "/docs", tmp_path)
    assert _operations(load.dom).paths == set()
    hosts = {urlsplit(url).hostname for url in off_loopback(load, port)}
    assert "cdn.jsdelivr.net" in hosts


def test_the_page_names_no_other_site(gateway):
    page = httpx.get(gateway.url + "/docs").text
    assert "http://" not in page and "https://" not in page
    assert all(f'"{path}"' in page for path in ASSET_PATHS)


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_assets_are_served_with_a_type_and_caching(gateway, name):
    response = httpx.get(f"{gateway.url}{ASSETS_PATH}/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == ASSETS[name]
    assert response.headers["cache-control"] == "public, max-age=86400"
    assert len(response.content) > 100
    again = httpx.get(
        response.url, headers={"if-none-match": f'"other", W/{response.headers["etag"]}'}
    )
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == response.headers["etag"]


def test_an_unknown_asset_is_a_404_envelope(gateway):
    response = httpx.get(f"{gateway.url}{ASSETS_PATH}/index.html")
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_assets_are_public_exactly_when_docs_is(tmp_path):
    public = ["/health", "/docs", "/openapi.json"]
    config = _config(tmp_path, security={"api_keys": [KEY], "public_paths": public})
    with GatewayProcess(config, tmp_path).start(wait_ready=False) as gateway:
        assets = [httpx.get(gateway.url + path).status_code for path in ASSET_PATHS]
        models = httpx.get(gateway.url + "/v1/models").status_code
    assert assets == [200] * len(ASSETS)
    assert models == 401


def test_docs_public_paths_adds_the_assets_only_with_docs():
    assert docs_public_paths(["/health"]) == ["/health"]
    assert docs_public_paths(["/docs", ASSET_PATHS[0]]) == ["/docs", *ASSET_PATHS]
