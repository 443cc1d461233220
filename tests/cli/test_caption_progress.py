"""`vlm-gateway caption`'s progress as the user sees it: a rich bar when stderr is a terminal
(run under a real pseudo-terminal and read back as a screen), plain lines when it is not."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.cli.test_caption import SlowOpenAI, make_folder, read_out
from tests.support.processes import REPO
from tests.support.terminal import Screen, run_on_terminal

PLAIN_LINE = re.compile(
    r"^(\d+)/(\d+) images \| \d+\.\d images/s \| ETA \d+:\d\d:\d\d \| (\d+) errors$"
)


class QuickOpenAI(SlowOpenAI):
    """Answers every request at once ('a cat')."""

    requests = 0
    answer_first = 10**9


@pytest.fixture
def server_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), QuickOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


def caption_argv(photos: Path, out: Path, url: str) -> list[str]:
    """Five images and one listed file that does not exist: one error line."""
    args = [photos, photos / "missing.png", "--model", "slow", "--out", out, "--url", url]
    return [sys.executable, "-m", "vlm_gateway", "caption", *map(str, args)]


def terminal_env() -> dict[str, str]:
    """A plain xterm: no variable that would force rich's choice either way."""
    forcing = ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES")
    env = {k: v for k, v in os.environ.items() if k not in forcing}
    env["TERM"] = "xterm-256color"
    return env


def test_a_terminal_gets_a_bar_with_rate_eta_and_errors(tmp_path, server_url):
    make_folder(tmp_path / "photos", 5, corrupt=False)
    out = tmp_path / "captions.jsonl"
    status, raw = run_on_terminal(
        caption_argv(tmp_path / "photos", out, server_url), REPO, terminal_env()
    )
    drawn = raw.decode(errors="replace")
    assert status == 0, drawn
    assert "\x1b[" in drawn  # drawn with cursor control, not printed as log lines
    screen = Screen(drawn).text()
    bar = [line for line in screen.splitlines() if "images/s" in line]
    assert len(bar) == 1, screen  # redrawn in place: one bar on screen, not a line per update
    assert re.search(r"━+ 6/6 images \d+\.\d images/s ETA 0:00:00 1 errors$", bar[0]), screen
    assert "5 captioned, 1 errors, 0 already done (of 6)" in screen
    assert sum(r["error"] is not None for r in read_out(out)) == 1


def test_a_dumb_terminal_gets_plain_lines(tmp_path, server_url):
    make_folder(tmp_path / "photos", 5, corrupt=False)
    env = terminal_env() | {"TERM": "dumb"}  # a tty that cannot move the cursor
    status, raw = run_on_terminal(
        caption_argv(tmp_path / "photos", tmp_path / "o.jsonl", server_url), REPO, env
    )
    assert status == 0, raw
    assert b"\x1b[" not in raw
    assert any(PLAIN_LINE.match(line) for line in raw.decode().splitlines()), raw


def test_a_pipe_gets_plain_lines_and_a_last_one(tmp_path, server_url):
    make_folder(tmp_path / "photos", 5, corrupt=False)
    result = subprocess.run(
        caption_argv(tmp_path / "photos", tmp_path / "captions.jsonl", server_url),
        cwd=REPO,
        env=terminal_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stderr and "\r" not in result.stderr
    lines = [m.groups() for m in map(PLAIN_LINE.match, result.stderr.splitlines()) if m]
    assert lines and lines[-1] == ("6", "6", "1"), result.stderr
