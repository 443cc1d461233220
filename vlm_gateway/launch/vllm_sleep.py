"""vLLM's sleep mode for a managed `vllm serve` (`swap: sleep`): what the launch adds, and the
calls that park a model's weights in host memory and bring them back.

What vLLM offers (checked in its source): `--enable-sleep-mode` makes the engine allocate
through its cumem allocator; with `VLLM_SERVER_DEV_MODE=1` the API server also mounts its
development routes, among them (vllm/entrypoints/openai/api_server.py in 0.8-0.10,
vllm/entrypoints/serve/dev/sleep/api_router.py from 0.11 on, 0.32 installed here):
- `POST /sleep?level=1`: weights copied to host memory, KV cache dropped (level 2 drops the
  weights too); optional `mode=abort|wait|keep` (0.11+) for requests still running, default
  abort. Answers 200 with an empty body (0.8-0.10) or {"status": "sleeping", "level": 1}.
- `POST /wake_up` (optional repeated `tags=weights|kv_cache`): everything back. Answers 200, empty
  (0.8-0.10) or {"status": "awake"|"sleeping", "tags": ...}: "sleeping" when tags woke only part.
- `GET /is_sleeping`: {"is_sleeping": true|false} in every version.
Older versions answered /sleep and /wake_up before the engine had finished ("FIXME: in v0 with
frontend multiprocessing ..."), so each call here is confirmed by `/is_sleeping`.

Sleep mode needs CUDA or ROCm (XPU from 0.11): on any other platform vLLM refuses to start with
it ("Sleep mode is not supported on current platform.", vllm/config/model.py). The development
routes include `/collective_rpc` and others no client may reach: the process listens on
127.0.0.1 only (the gateway owns `--host`), this client talks to loopback only, and the
gateway's own routes never forward these paths (tests/server/test_dev_endpoints.py).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import orjson

from vlm_gateway.core.errors import UpstreamError, UpstreamTimeoutError
from vlm_gateway.launch.vllm_command import VllmCommand

SLEEP_MODE_FLAG = "--enable-sleep-mode"
DEV_MODE_ENV = (("VLLM_SERVER_DEV_MODE", "1"),)
SLEEP_LEVEL = 1  # weights kept in host memory: a wake needs no read from disk
# Device nodes of a CUDA (NVIDIA driver) or ROCm (AMD KFD) GPU.
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")


def with_sleep_mode(command: VllmCommand) -> VllmCommand:
    """`command` with what sleep mode needs: the flag, and the development routes switched on."""
    return replace(
        command,
        extra_args=(*command.extra_args, SLEEP_MODE_FLAG),
        env=(*command.env, *DEV_MODE_ENV),
    )


def sleep_mode_unavailable(
    env: Mapping[str, str], device_nodes: tuple[str, ...] = GPU_DEVICE_NODES
) -> str | None:
    """Why a vLLM launched with `env` (the entry's additions) on this machine could not use
    sleep mode, or None when it may: a GPU must be visible to it."""
    visible = env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU from it"
    if not any(Path(node).exists() for node in device_nodes):
        return "this machine shows no CUDA or ROCm GPU (" + ", ".join(device_nodes) + " absent)"
    return None


class SleepClient:
    """Sleep and wake one managed vLLM through its development routes, on loopback only.

    The caller sleeps only a replica with nothing in flight: vLLM's default for requests still
    running at `/sleep` is to abort them."""

    def __init__(
        self, client: aiohttp.ClientSession, root_url: str, name: str, timeout_s: float = 300.0
    ) -> None:
        host = urlsplit(root_url).hostname or ""
        if not _is_loopback(host):
            raise ValueError(f"vLLM's sleep routes are called on loopback only, not {host!r}")
        self._client = client
        self._root = root_url.rstrip("/")
        self._name = name  # the model, as errors name it
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def sleep(self) -> None:
        """Park the weights in host memory and drop the KV cache; return once vLLM sleeps."""
        await self._call("POST", f"/sleep?level={SLEEP_LEVEL}", "go to sleep")
        if not await self.is_sleeping():
            raise UpstreamError(f"vLLM for model '{self._name}' answered /sleep but is awake.")

    async def wake_up(self) -> None:
        """Bring weights and KV cache back; return once vLLM serves again."""
        await self._call("POST", "/wake_up", "wake up")
        if await self.is_sleeping():
            raise UpstreamError(
                f"vLLM for model '{self._name}' answered /wake_up but still sleeps."
            )

    async def is_sleeping(self) -> bool:
        body = await self._call("GET", "/is_sleeping", "say whether it sleeps")
        try:
            answer = orjson.loads(body)["is_sleeping"]
        except (ValueError, TypeError, KeyError):
            answer = None
        if not isinstance(answer, bool):
            raise UpstreamError(
                f"vLLM for model '{self._name}' answered /is_sleeping with {body[:200]!r}, "
                'not {"is_sleeping": true|false}.'
            )
        return answer

    async def _call(self, method: str, path: str, what: str) -> bytes:
        failed = f"vLLM for model '{self._name}' did not {what}"
        try:
            async with self._client.request(
                method, self._root + path, timeout=self._timeout
            ) as response:
                body = await response.read()
        except TimeoutError:
            raise UpstreamTimeoutError(f"{failed} within {self._timeout.total:g} s.") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{failed}: {exc or type(exc).__name__}.") from None
        if response.status == 404:
            raise UpstreamError(
                f"{failed}: {path.split('?')[0]} is not served (404); it runs without "
                f"{SLEEP_MODE_FLAG} and VLLM_SERVER_DEV_MODE=1."
            )
        if response.status != 200:
            text = body[:300].decode(errors="replace")
            raise UpstreamError(f"{failed}: status {response.status}: {text}")
        return body


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
