"""API keys, end to end: a real gateway process, the official SDK, and raw HTTP for the
bypass attempts no well-behaved client would send."""

from __future__ import annotations

import socket

import httpx
import openai
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.processes import GatewayProcess

CONFIG_KEY = "sk-config-0123456789"
ENV_KEY = "sk-env-abcdefghij"
FILE_KEY = "sk-file-klmnopqrst"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("auth")
    key_file = work / "keys.txt"
    key_file.write_text(f"# one key per line\n\n{FILE_KEY}\n")
    with FakeUpstream() as upstream:
        config = {
            "data_dir": str(work / "data"),
            "security": {"api_keys": [CONFIG_KEY], "api_keys_file": str(key_file)},
            "models": [
                {
                    "name": "m",
                    "backend": "openai",
                    "base_url": upstream.base_url,
                    "upstream_model": "ok",
                }
            ],
        }
        gateway = GatewayProcess(config, work, env={"VLMGW_API_KEYS": f"{ENV_KEY}, unused-2"})
        gateway.start()
        try:
            yield gateway
        finally:
            gateway.stop()


def sdk(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def raw_status(gateway, request_line: str, headers: str = "") -> int:
    """Send exactly this request (no client-side normalization) and return the status."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as conn:
        conn.sendall(
            f"{request_line}\r\nHost: 127.0.0.1:{gateway.port}\r\n{headers}"
            "Connection: close\r\n\r\n".encode()
        )
        head = conn.recv(4096).decode("latin-1")
    return int(head.split(" ", 2)[1])


@pytest.mark.parametrize("key", [CONFIG_KEY, ENV_KEY, FILE_KEY])
def test_the_right_key_from_config_env_or_file_is_served(gateway, key):
    completion = sdk(gateway, key).chat.completions.create(model="m", messages=HI)
    assert completion.choices[0].message.content
    assert [model.id for model in sdk(gateway, key).models.list()] == ["m"]


def test_a_wrong_key_is_401_invalid_api_key(gateway):
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(gateway, "sk-wrong").chat.completions.create(model="m", messages=HI)
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    assert "sk-wrong" not in caught.value.message


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer"},
        {"authorization": f"Basic {CONFIG_KEY}"},
        {"authorization": f"Bearer {CONFIG_KEY}x"},
        {"x-api-key": CONFIG_KEY},
    ],
)
def test_a_missing_or_malformed_key_is_401_in_the_envelope(gateway, headers):
    response = httpx.post(
        gateway.url + "/v1/chat/completions", headers=headers, json={"model": "m", "messages": HI}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_public_paths_need_no_key(gateway, path):
    assert httpx.get(gateway.url + path).status_code == 200


@pytest.mark.parametrize(
    "target",
    [
        "//v1/models",
        "/v1/../v1/models",
        "/v1/./models",
        "/v1/%6dodels",
        "/%761/models",
        "/v1%2fmodels",
        "/health/../v1/models",
        "/health%2f..%2fv1/models",
        "/health/",
        "/HEALTH",
        "/health;/../v1/models",
        "/./health",
        "/ready/../v1/models",
        "http://127.0.0.1/v1/models",
        "*",
    ],
)
def test_path_spelling_bypass_attempts_are_refused(gateway, target):
    status = raw_status(gateway, f"GET {target} HTTP/1.1")
    assert status in (400, 401), target  # 400: the HTTP parser refused it outright


@pytest.mark.parametrize(
    "headers",
    [
        "X-Original-URL: /health\r\n",
        "X-Rewrite-URL: /health\r\n",
        "X-Forwarded-Prefix: /health\r\n",
        "X-Forwarded-Host: localhost\r\n",
        "Forwarded: for=127.0.0.1;host=localhost\r\n",
    ],
)
def test_header_games_do_not_make_a_route_public(gateway, headers):
    assert raw_status(gateway, "GET /v1/models HTTP/1.1", headers) == 401


def test_a_public_host_header_does_not_open_private_routes(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as conn:
        conn.sendall(
            b"GET /v1/models HTTP/1.1\r\nHost: localhost/health\r\nConnection: close\r\n\r\n"
        )
        assert conn.recv(4096).split(b" ", 2)[1] in (b"400", b"401")


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"])
def test_other_methods_on_guarded_routes_are_refused(gateway, method):
    response = httpx.request(
        method,
        gateway.url + "/v1/models",
        headers={"origin": "http://example.com", "access-control-request-method": "GET"},
    )
    assert response.status_code == 401


def test_keys_never_reach_the_log(gateway):
    sdk(gateway, CONFIG_KEY).models.list()
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, "sk-wrong-in-log").models.list()
    log = gateway.log()
    assert "refused GET /v1/models: invalid API key" in log
    for secret in (CONFIG_KEY, ENV_KEY, FILE_KEY, "sk-wrong-in-log"):
        assert secret not in log


def test_key_settings_are_checked_when_the_config_loads(tmp_path):
    from vlm_gateway.backends.kinds import settings_model
    from vlm_gateway.config.loading import ConfigError, load_settings

    settings = load_settings(settings_model(), None, environ={"VLMGW_API_KEYS": " a-key ,, b-key "})
    assert [key.get_secret_value() for key in settings.security.api_keys] == ["a-key", "b-key"]
    assert "a-key" not in repr(settings)
    with pytest.raises(ConfigError) as caught:
        load_settings(
            settings_model(), None, environ={"VLMGW_API_KEYS_FILE": str(tmp_path / "missing")}
        )
    assert "security.api_keys_file" in caught.value.reasons[0]
