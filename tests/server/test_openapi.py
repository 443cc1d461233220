"""/docs and /openapi.json: on by default, describing the bodies the routes parse by hand;
`api_docs: false` turns both (and the page's assets) into a 404 envelope; with API keys they
need a key like any non-public path. The page in a browser: test_api_docs.py."""

from __future__ import annotations

import httpx
import pytest

from tests.support.processes import GatewayProcess, free_port

KEY = "sk-docs-0123456789"
ASSET = "/docs/assets/swagger-ui-bundle.js"


def _config(**top) -> dict:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: no request goes out
    return {**top, "models": [{"name": "m", "backend": "openai", "base_url": dead}]}


@pytest.fixture(scope="module")
def keyed_gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("docs-on")
    config = _config(data_dir=str(work / "data"), security={"api_keys": [KEY]})
    with GatewayProcess(config, work).start(wait_ready=False) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def document(keyed_gateway) -> dict:
    response = httpx.get(keyed_gateway.url + "/openapi.json", headers=_bearer())
    assert response.status_code == 200
    return response.json()


def _bearer() -> dict[str, str]:
    return {"authorization": f"Bearer {KEY}"}


def _json_body_schema(document: dict, path: str) -> dict:
    return document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


def _refs(node) -> set[str]:
    if isinstance(node, dict):
        own = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return own.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


def test_chat_completions_body_is_described(document):
    schema = _json_body_schema(document, "/v1/chat/completions")
    assert {"messages", "model"} <= set(schema["properties"])
    assert set(schema["required"]) >= {"messages", "model"}
    responses = document["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]
    assert set(responses["content"]) == {"application/json", "text/event-stream"}


def test_other_hand_parsed_bodies_are_described(document):
    assert "prompt" in _json_body_schema(document, "/v1/completions")["properties"]
    assert "input_file_id" in _json_body_schema(document, "/v1/batches")["properties"]
    upload = document["paths"]["/v1/files"]["post"]["requestBody"]["content"]
    assert set(upload["multipart/form-data"]["schema"]["required"]) == {"file", "purpose"}


def test_every_reference_resolves_in_the_components(document):
    schemas = document["components"]["schemas"]
    refs = _refs(document)
    assert "#/components/schemas/ImageURL" in refs  # a nested model of the chat body
    assert {ref.removeprefix("#/components/schemas/") for ref in refs} <= set(schemas)
    assert not any("$defs" in str(ref) for ref in refs)


def test_docs_page_is_html_that_loads_the_document(keyed_gateway):
    response = httpx.get(keyed_gateway.url + "/docs", headers=_bearer())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in response.text


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", ASSET])
def test_docs_need_a_key_like_other_non_public_paths(keyed_gateway, path):
    response = httpx.get(keyed_gateway.url + path)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_api_docs_false_turns_all_into_a_404_envelope(tmp_path):
    config = _config(data_dir=str(tmp_path / "data"), api_docs=False)
    with GatewayProcess(config, tmp_path).start(wait_ready=False) as gateway:
        paths = ("/docs", "/openapi.json", ASSET, "/docs/oauth2-redirect")
        responses = [httpx.get(gateway.url + path) for path in paths]
    for response in responses:
        assert response.status_code == 404
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
