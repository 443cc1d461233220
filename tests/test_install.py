"""The install a user (and docker/gateway.Dockerfile) gets: `pip install .` into a fresh virtual
environment (the image adds only the `postgres` extra, psycopg, which nothing imports unless a
PostgreSQL batch store is configured), laid out as the image would be (tests/support/dockerfile.py
follows the Dockerfile's steps), then the image's ENTRYPOINT and CMD in front of the fake
upstream: ready, and chat requests with images answered, with no torch anywhere.

This builds a real environment from the package registry (about 20 s with pip's cache warm).
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.dockerfile import ImageLayout, build_image_layout
from tests.support.fake_upstream import FakeUpstream
from tests.support.image_server import ImageServer
from tests.support.images import data_url, image_message, png_bytes
from tests.support.processes import free_port, stop_process_group, wait_http

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "gateway.Dockerfile"
PNG = png_bytes(40, 40)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> ImageLayout:
    work = tmp_path_factory.mktemp("image")
    return build_image_layout(DOCKERFILE, REPO, work / "root", work / "build.log")


@pytest.fixture(scope="module")
def servers(image, tmp_path_factory):
    """The image's ENTRYPOINT + CMD, as a container would start, on a loopback port."""
    with FakeUpstream() as upstream, ImageServer({"/cat.png": PNG}) as images:
        config = image.host_path(_option(image.cmd, "--config"))
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(_gateway_config(upstream.base_url))
        proc, url, log = _start_container_command(image, tmp_path_factory.mktemp("run"))
        try:
            wait_http(url + "/ready", 60, proc, log)
            yield url, upstream, images
        finally:
            stop_process_group(proc)


def _gateway_config(upstream_url: str) -> str:
    return (
        "images: {allowed_networks: ['127.0.0.1/32']}  # the loopback image server only\n"
        "models:\n"
        f"  - {{name: m, backend: openai, base_url: '{upstream_url}', upstream_model: ok}}\n"
    )


def _option(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} is missing from {argv}"
    return argv[argv.index(name) + 1]


def _start_container_command(image: ImageLayout, work: Path):
    """ENTRYPOINT + CMD with the image's paths mapped here. The container listens on every
    address (0.0.0.0, published by compose); this run listens on loopback only."""
    assert _option(image.cmd, "--host") == "0.0.0.0"  # else a published port never answers
    port = free_port()
    argv = [str(image.host_path(image.entrypoint[0])), *image.entrypoint[1:], *image.cmd]
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--config") + 1] = str(image.host_path(_option(image.cmd, "--config")))
    env = {key: value for key, value in os.environ.items() if not key.startswith("VLMGW_")}
    env |= {key: _mapped(image, value) for key, value in image.env.items()}
    log = work / "gateway.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=image.host_path(image.workdir),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, f"http://127.0.0.1:{port}", log


def _mapped(image: ImageLayout, value: str) -> str:
    return str(image.host_path(value)) if value.startswith("/") else value


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)


def _venv_python(image: ImageLayout) -> Path:
    return image.host_path(image.entrypoint[0]).parent / "python"


def test_the_image_adds_vllms_audio_extra_for_the_vllm_it_has(image):
    """Audio requests need PyAV and soundfile in vLLM's Python; the step is left to the image
    (tests/support/dockerfile.py), so what it asks for is checked here."""
    [step] = image.base_image_runs
    assert 'VLLM_VERSION="$(python3 -c ' in step and 'print(version("vllm"))' in step
    assert step.endswith('uv pip install --system --no-cache "vllm[audio,video]==${VLLM_VERSION}"')


def test_the_install_has_no_extras(image):
    """No torch, no transformers: what runs below is the no-extras path."""
    for module in ("torch", "transformers"):
        result = subprocess.run(
            [str(_venv_python(image)), "-c", f"import {module}"], capture_output=True, text=True
        )
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, module


def test_the_image_command_serves_ready_and_chat(servers):
    url, _, _ = servers
    assert httpx.get(url + "/ready").json()["status"] == "ready"
    reply = _client(url).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content


def test_the_docs_page_and_its_swagger_ui_files_are_served(servers):
    """Swagger UI comes from a main dependency (fastapi-swagger): no extra, no CDN."""
    url, _, _ = servers
    assert httpx.get(url + "/docs").status_code == 200
    bundle = httpx.get(url + "/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200
    assert b"SwaggerUIBundle" in bundle.content


def test_a_png_data_url_is_answered(servers):
    url, upstream, _ = servers
    upstream.clear()
    reply = _client(url).chat.completions.create(
        model="m", messages=[image_message("What is this?", data_url(PNG))]
    )
    assert reply.choices[0].message.content
    [sent] = upstream.requests
    assert sent["messages"][0]["content"][0]["image_url"]["url"] == data_url(PNG)


def test_an_http_image_url_is_fetched_and_answered(servers):
    url, upstream, images = servers
    upstream.clear()
    reply = _client(url).chat.completions.create(
        model="m", messages=[image_message("What is this?", images.url("/cat.png"))]
    )
    assert reply.choices[0].message.content
    assert images.hits["/cat.png"] == 1
    [sent] = upstream.requests
    assert sent["messages"][0]["content"][0]["image_url"]["url"] == data_url(PNG)


def test_data_goes_where_the_image_env_says(image, servers):
    """The image sets VLMGW_DATA_DIR to its volume's mount point: the batch store is there."""
    data_dir = image.host_path(image.env["VLMGW_DATA_DIR"])
    assert (data_dir / "vlm-gateway.sqlite3").is_file()


def test_version_comes_from_the_installed_metadata(image):
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    result = subprocess.run(
        [str(image.host_path(image.entrypoint[0])), "--version"], capture_output=True, text=True
    )
    assert result.stdout.strip() == f"vlm-gateway {declared}", result.stderr
