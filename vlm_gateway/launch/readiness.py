"""Readiness of a freshly launched OpenAI-compatible server, by plain HTTP polling: the
process is alive, then `/health` answers 200, then `/v1/models` lists the served name, all
under a deadline. The log is never read to decide readiness."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from vlm_gateway.launch.process import ManagedProcess

_POLL_INTERVAL = 0.5


class ProcessExited(Exception):
    def __init__(self, returncode: int) -> None:
        super().__init__(f"the process exited with code {returncode} before it was ready")
        self.returncode = returncode


class StartTimeout(Exception):
    pass


async def wait_until_serving(
    client: aiohttp.ClientSession,
    root_url: str,
    served_name: str,
    process: ManagedProcess,
    deadline_s: float,
) -> dict[str, Any]:
    """Return the server's /v1/models card for `served_name` once it is served.

    Raises ProcessExited the moment the process exits, StartTimeout at the deadline."""
    try:
        return await asyncio.wait_for(_poll(client, root_url, served_name, process), deadline_s)
    except TimeoutError:
        if process.exited.done():
            raise ProcessExited(process.exited.result()) from None
        raise StartTimeout(f"not ready within the startup deadline of {deadline_s:g} s") from None


async def _poll(
    client: aiohttp.ClientSession, root_url: str, served_name: str, process: ManagedProcess
) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=5.0, connect=2.0)
    while True:
        if process.exited.done():
            raise ProcessExited(process.exited.result())
        card = await _served_card(client, root_url, served_name, timeout)
        if card is not None:
            return card
        # Sleep, but wake at once if the process exits meanwhile.
        await asyncio.wait({process.exited}, timeout=_POLL_INTERVAL)


async def _served_card(
    client: aiohttp.ClientSession, root_url: str, served_name: str, timeout: aiohttp.ClientTimeout
) -> dict[str, Any] | None:
    try:
        async with client.get(root_url + "/health", timeout=timeout) as health:
            if health.status != 200:
                return None
        async with client.get(root_url + "/v1/models", timeout=timeout) as models:
            if models.status != 200:
                return None
            listed = orjson.loads(await models.read())
        for card in listed.get("data", []):
            if isinstance(card, dict) and card.get("id") == served_name:
                return card
    except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
        return None
    return None
