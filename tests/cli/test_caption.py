"""`vlm-gateway caption` as a user runs it (a real subprocess): a folder of generated images
with a corrupt one, list files, resume after a kill -9, and the two ways to reach a model
(the gateway in-process from --config, or --url)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.support.images import png_bytes
from tests.support.processes import REPO


@pytest.fixture
def config(upstream, tmp_path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "models": [
                    {
                        "name": "ok",
                        "backend": "openai",
                        "base_url": upstream.base_url,
                        "upstream_model": "ok",
                    }
                ],
            }
        )
    )
    return path


def make_folder(root: Path, count: int, corrupt: bool = True) -> list[Path]:
    images = []
    for i in range(count):
        path = root / ("nested" if i % 2 else "") / f"img{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(seed=i))
        images.append(path)
    if corrupt:
        images.append(root / "broken.jpg")
        images[-1].write_bytes(b"\xff\xd8 this is not really a jpeg")
    (root / "notes.txt").write_text("not an image: skipped by the folder walk")
    return images


def caption(*args, check: bool = True) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "vlm_gateway", "caption", *map(str, args)]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def read_out(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folder_with_a_corrupt_image(tmp_path, config, upstream):
    images = make_folder(tmp_path / "photos", 6)
    out = tmp_path / "captions.jsonl"
    result = caption(tmp_path / "photos", "--model", "ok", "--out", out, "--config", config)
    records = {r["image"]: r for r in read_out(out)}
    assert sorted(records) == sorted(map(str, images))
    broken = records.pop(str(images[-1]))
    assert broken["caption"] is None and "not a JPEG, PNG" in broken["error"]
    assert all(
        r["caption"] == "hello" and r["error"] is None and r["model"] == "ok"
        for r in records.values()
    )
    assert "images/s" in result.stderr and "ETA" in result.stderr
    assert "6 captioned, 1 errors" in result.stderr


def test_rerun_skips_done_and_retries_errors_and_a_cut_line(tmp_path, config, upstream):
    images = make_folder(tmp_path / "photos", 4, corrupt=False)
    out = tmp_path / "captions.jsonl"
    done = {"image": str(images[0]), "caption": "old", "model": "ok", "error": None}
    failed = {"image": str(images[1]), "caption": None, "model": "ok", "error": "HTTP 503: x"}
    cut = json.dumps({"image": str(images[2]), "caption": "hal"})[:25]  # a kill mid-write
    out.write_text(json.dumps(done) + "\n" + json.dumps(failed) + "\n" + cut)
    upstream.clear()
    result = caption(tmp_path / "photos", "--model", "ok", "--out", out, "--config", config)
    assert len(upstream.requests) == 3
    records = read_out(out)
    assert sorted(r["image"] for r in records) == sorted(map(str, images))
    assert records[0] == done and all(r["error"] is None for r in records)
    assert "1 already done" in result.stderr


def test_list_file_of_paths_and_missing_files(tmp_path, config):
    images = make_folder(tmp_path / "photos", 2, corrupt=False)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my images\n{images[0]}\nphotos/nested/img0001.png\n\nmissing.png\n")
    out = tmp_path / "out.jsonl"
    caption(listing, "--model", "ok", "--out", out, "--config", config)
    records = {r["image"]: r for r in read_out(out)}
    assert records[str(images[0])]["caption"] == "hello"
    assert records[str(tmp_path / "photos/nested/img0001.png")]["caption"] == "hello"
    assert "cannot read the image" in records[str(tmp_path / "missing.png")]["error"]


def test_setup_problems_exit_2_without_an_output(tmp_path, config):
    images = make_folder(tmp_path / "photos", 1, corrupt=False)
    result = caption(
        images[0], "--model", "nope", "--out", tmp_path / "o.jsonl", "--config", config, check=False
    )
    assert result.returncode == 2 and "no model 'nope'" in result.stderr
    result = caption(
        tmp_path / "nowhere",
        "--model",
        "ok",
        "--out",
        tmp_path / "o.jsonl",
        "--config",
        config,
        check=False,
    )
    assert result.returncode == 2 and "no such file or folder" in result.stderr


class SlowOpenAI(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that answers `answer_first` requests, then holds the rest
    until `release` is set, so a kill always lands mid-run."""

    requests = 0
    answer_first = 20
    release = threading.Event()

    def do_GET(self):
        self._reply({"object": "list", "data": [{"id": "slow", "object": "model"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        type(self).requests += 1
        if type(self).requests > self.answer_first:
            self.release.wait(60)
        self._reply(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": "slow",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "a cat"},
                    }
                ],
            }
        )

    def _reply(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_resume_after_kill_9_with_url(tmp_path):
    images = make_folder(tmp_path / "photos", 200, corrupt=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    out = tmp_path / "captions.jsonl"
    args = [
        tmp_path / "photos",
        "--model",
        "slow",
        "--out",
        out,
        "--url",
        url,
        "--concurrency",
        "2",
    ]
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vlm_gateway", "caption", *map(str, args)],
            cwd=REPO,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not out.exists() or out.read_text().count("\n") < SlowOpenAI.answer_first:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        kept = out.read_text().count("\n")
        assert kept == SlowOpenAI.answer_first  # the held requests were never answered
        SlowOpenAI.release.set()
        SlowOpenAI.requests = 0
        caption(*args)
    finally:
        SlowOpenAI.release.set()
        server.shutdown()
    records = read_out(out)
    assert sorted(r["image"] for r in records) == sorted(map(str, images))
    assert all(r["caption"] == "a cat" for r in records)
    assert SlowOpenAI.requests == len(images) - kept


def test_no_server_no_config_runs_blip2_in_process(tmp_path, tiny_models):
    """The one-command case: `--model` names BLIP-2 weights, the gateway runs in-process."""
    pytest.importorskip("torch")
    images = make_folder(tmp_path / "photos", 3)
    out = tmp_path / "captions.jsonl"
    result = caption(
        tmp_path / "photos", "--model", tiny_models["blip2"], "--out", out, "--max-tokens", "5"
    )
    records = {r["image"]: r for r in read_out(out)}
    assert sorted(records) == sorted(map(str, images))
    assert records.pop(str(images[-1]))["error"]
    assert all(isinstance(r["caption"], str) and r["model"] == "blip2" for r in records.values())
    assert "3 captioned, 1 errors" in result.stderr


class FlakyOpenAI(SlowOpenAI):
    """Answers the first two chat requests with 503, as a replica that is briefly down."""

    requests = 0

    def do_POST(self):
        if type(self).requests < 2:
            self.rfile.read(int(self.headers["content-length"]))
            type(self).requests += 1
            self.send_response(503)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        super().do_POST()


def test_transient_503_is_retried(tmp_path):
    images = make_folder(tmp_path / "photos", 1, corrupt=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "captions.jsonl"
    try:
        caption(
            images[0],
            "--model",
            "slow",
            "--out",
            out,
            "--url",
            f"http://127.0.0.1:{server.server_address[1]}",
        )
    finally:
        server.shutdown()
    assert read_out(out) == [
        {"image": str(images[0]), "caption": "a cat", "model": "slow", "error": None}
    ]
    assert FlakyOpenAI.requests == 3
