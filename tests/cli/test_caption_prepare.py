"""`vlm-gateway caption` for a model that shrinks its images, end to end (a real subprocess):
the model gets images shrunk to cover its input size, a corrupt or truncated photo is an error
line (the same line in-process and through --url), and with --url the shrinking happens before
the upload (the gateway only ever sees small images)."""

from __future__ import annotations

import base64
import io
import re

import httpx
import pytest
import yaml
from PIL import Image

from tests.cli.test_caption import caption, read_out
from tests.support.images import png_bytes
from tests.support.processes import GatewayProcess
from tests.support.settings import upstream_entry


@pytest.fixture
def config(upstream) -> dict:
    """`small` (answered by the fake upstream) wants 64x64 inputs."""
    entry = upstream_entry("small", upstream.base_url, "ok")
    return {"models": [{**entry, "images": {"resize": "64x64"}}]}


def photos(root):
    """Three 640x480 photos (pixel noise, stored as JPEG), a truncated one and a fake one."""
    root.mkdir()
    for seed in range(3):
        jpeg = io.BytesIO()
        Image.open(io.BytesIO(png_bytes(640, 480, seed=seed))).save(jpeg, format="JPEG")
        (root / f"photo{seed}.jpg").write_bytes(jpeg.getvalue())
    whole = (root / "photo0.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "fake.jpg").write_bytes(b"\xff\xd8 not really a jpeg" * 100)
    return root


def sizes_received(upstream) -> list[tuple[int, int]]:
    sizes = []
    for body in upstream.requests:
        url = body["messages"][0]["content"][0]["image_url"]["url"]
        sizes.append(Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))).size)
    return sizes


def check_lines(out, folder) -> dict[str, str]:
    records = {r["image"]: r for r in read_out(out)}
    assert sorted(records) == sorted(str(p) for p in folder.iterdir())
    for seed in range(3):
        assert records[str(folder / f"photo{seed}.jpg")]["caption"] == "hello"
    errors = {name: records[str(folder / name)]["error"] for name in ("truncated.jpg", "fake.jpg")}
    assert all(error.startswith("HTTP 400: The image in messages[0]") for error in errors.values())
    assert "truncated or corrupt" in errors["truncated.jpg"]
    assert "not a JPEG, PNG" in errors["fake.jpg"]
    return errors


def test_in_process_and_through_a_gateway_alike(tmp_path, config, upstream, workdir):
    folder = photos(tmp_path / "photos")
    upstream.clear()
    in_process = tmp_path / "in-process.jsonl"
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    result = caption(
        folder, "--model", "small", "--out", in_process, "--config", tmp_path / "gateway.yaml"
    )
    assert "3 captioned, 2 errors" in result.stderr
    assert sizes_received(upstream) == [(85, 64)] * 3
    errors_in_process = check_lines(in_process, folder)

    upstream.clear()
    remote = tmp_path / "remote.jsonl"
    with GatewayProcess(config, workdir).start() as gateway:
        caption(folder, "--model", "small", "--out", remote, "--url", gateway.url + "/v1")
        metrics = httpx.get(gateway.url + "/metrics", timeout=10).text
    assert sizes_received(upstream) == [(85, 64)] * 3
    assert check_lines(remote, folder) == errors_in_process
    # The gateway saw small images: shrunk by caption before the upload.
    accepted = re.search(
        r'vlmgw_image_size_bytes_sum\{model="small",source="data"\} (\S+)', metrics
    )
    assert accepted and float(accepted[1]) < 3 * 20_000
