"""Readiness of a freshly launched OpenAI-compatible server, by plain HTTP polling: the
process is alive, `/health` answers 200 and `/v1/models` lists the served name (both asked at
once), all under a deadline. The log is never read to decide readiness.

Seen promptly, because an on-demand swap waits for it (docs/on-demand.md): while nothing
accepts connections on the port, a bare TCP connect is tried every 10 ms (on loopback the
kernel refuses it within the call: about 1% of one core through a start, measured on a shared
2-core box, against 0.1% for the old look every 0.5 s); the HTTP requests are sent only once
the port accepts. vLLM 0.32 binds its port early but listens only once its HTTP server serves
(entrypoints/launchers/launcher.py), so the first accepted connection finds it serving; a
server that listens early holds the request in its backlog and answers it the moment it
serves, which is as prompt."""

from __future__ import annotations

import asyncio
import errno
import select
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from vlm_gateway.launch.process import ManagedProcess

_CONNECT_POLL_S = 0.01  # while the port refuses connections
_HTTP_POLL_S = 0.1  # while the server answers but does not serve the name yet
_CONNECT_TIMEOUT_S = 2.0


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
    if process.exited.done():
        raise ProcessExited(process.exited.result())
    # The looks run in a task of their own, so that an exit ends the wait at once.
    looking = asyncio.ensure_future(_look_until_served(client, root_url, served_name))
    either: set[asyncio.Future[Any]] = {looking, process.exited}
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        looking.cancel()
    if looking.done() and not looking.cancelled():
        return looking.result()
    raise ProcessExited(process.exited.result())


async def _look_until_served(
    client: aiohttp.ClientSession, root_url: str, served_name: str
) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=5.0, connect=2.0)
    address = await _tcp_address(root_url)
    while True:
        interval = _CONNECT_POLL_S
        if address is None or await _accepts_connections(address):
            card = await _served_card(client, root_url, served_name, timeout)
            if card is not None:
                return card
            interval = _HTTP_POLL_S
        await asyncio.sleep(interval)


_Address = tuple[socket.AddressFamily, Any]


async def _tcp_address(root_url: str) -> _Address | None:
    """Where the server will listen, resolved once; None where that cannot be said (then
    every look is an HTTP request)."""
    parts = urlsplit(root_url)
    if parts.hostname is None:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        found = await loop.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        return None
    family, _, _, _, sockaddr = found[0]
    return family, sockaddr


async def _accepts_connections(address: _Address) -> bool:
    family, sockaddr = address
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        known = _connect_result(sock, sockaddr)
        if known is not None:
            return known
        try:  # not known at once (not loopback): wait for it
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                await asyncio.get_running_loop().sock_connect(sock, sockaddr)
        except (OSError, TimeoutError):
            return False
    return True


def _connect_result(sock: socket.socket, sockaddr: Any) -> bool | None:
    """Connected or refused, when the kernel says so at once (on loopback it does); None
    while the connect is still under way. Cheaper than the event loop's connect."""
    error = sock.connect_ex(sockaddr)
    if error == errno.EINPROGRESS:
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        if not poller.poll(0):
            return None
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    return error == 0


async def _served_card(
    client: aiohttp.ClientSession, root_url: str, served_name: str, timeout: aiohttp.ClientTimeout
) -> dict[str, Any] | None:
    # Both asked at once: a swap waits for the slower answer, not for two in a row.
    health, models = await asyncio.gather(
        _body_if_ok(client, root_url + "/health", timeout),
        _body_if_ok(client, root_url + "/v1/models", timeout),
    )
    if health is None or models is None:
        return None
    try:
        listed = orjson.loads(models)
        for card in listed.get("data", []):
            if isinstance(card, dict) and card.get("id") == served_name:
                return card
    except (ValueError, AttributeError):
        return None
    return None


async def _body_if_ok(
    client: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout
) -> bytes | None:
    try:
        async with client.get(url, timeout=timeout) as response:
            return await response.read() if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None
