"""The SSRF-safe image fetcher.

Every TCP connection its HTTP client opens goes through `GuardedNetworkBackend`: the host is
resolved once, every A/AAAA answer is checked against the blocked ranges, and the socket is
dialled to the checked address. httpx still believes it talks to the host name, so the Host
header and TLS SNI (and certificate checks) stay those of the URL, and a second DNS answer
(rebinding) can never be the one dialled. Redirects are followed by hand, each hop re-parsed by
the one URL parser and re-checked; a total deadline and a byte cap bound every fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urljoin

import httpcore
import httpx

from vlm_gateway.core.image_errors import (
    BlockedImageURLError,
    ImageFetchError,
    ImageTooLargeError,
    shorten,
)
from vlm_gateway.images.cache import ByteLRU
from vlm_gateway.images.netguard import AddressPolicy
from vlm_gateway.images.settings import ImageSettings
from vlm_gateway.images.urls import HttpURL, parse_http_url

log = logging.getLogger(__name__)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[str]:
        """Every address the name resolves to (IPv4 and IPv6), as text."""


class SystemResolver:
    """getaddrinfo in the loop's thread pool: never blocks the event loop."""

    async def resolve(self, host: str, port: int) -> list[str]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _Refused(Exception):
    """Raised inside httpcore's connect: not an OSError, so it reaches us unwrapped."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(reason)
        self.host, self.reason = host, reason


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    def __init__(
        self,
        policy: AddressPolicy,
        resolver: Resolver,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._inner = inner or httpcore.AnyIOBackend()

    async def checked_address(self, host: str, port: int) -> str:
        if _is_ip(host):
            answers = [host]
        else:
            try:
                answers = await self._resolver.resolve(host, port)
            except OSError:
                raise _Refused(host, "its name does not resolve") from None
            if not answers:
                raise _Refused(host, "its name does not resolve")
        for address in answers:
            reason = self._policy.refusal(address)
            if reason is not None:
                raise _Refused(host, f"it resolves to {reason} ({address})")
        return answers[0]

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        address = await self.checked_address(host, port)
        return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise _Refused(path, "unix sockets are never dialled")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, backend: GuardedNetworkBackend, ssl_context: ssl.SSLContext | None) -> None:
        super().__init__(trust_env=False)
        # httpx takes no network backend argument: swap its pool for one that dials through
        # the guard (same settings as httpx's own default pool).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(trust_env=False),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=backend,
        )


@dataclass(frozen=True)
class FetchedImage:
    data: bytes
    content_type: str | None


class ImageFetcher:
    """One per app (built in the lifespan, closed with it)."""

    def __init__(
        self,
        settings: ImageSettings,
        resolver: Resolver | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._settings = settings
        policy = AddressPolicy.build(settings.allow_private_networks, settings.allowed_networks)
        backend = GuardedNetworkBackend(policy, resolver or SystemResolver(), network_backend)
        self._client = httpx.AsyncClient(
            transport=_GuardedTransport(backend, ssl_context),
            trust_env=False,  # an environment proxy would dial for us, unchecked
            follow_redirects=False,
            headers={
                "user-agent": settings.user_agent,
                "accept": "image/*",
                "accept-encoding": "identity",
            },
            timeout=settings.fetch_timeout,
        )
        self._cache: ByteLRU[FetchedImage] = ByteLRU(settings.cache_bytes, settings.cache_ttl)
        self._in_flight: dict[tuple[str, int], asyncio.Future[FetchedImage]] = {}

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(
        self, url: HttpURL, max_bytes: int, noun: str = "image", timeout: float | None = None
    ) -> FetchedImage:
        """The file's bytes (an image, or the `noun` the errors name: video, audio), read no
        further than `max_bytes`, within `timeout` (default `images.fetch_timeout`);
        identical URLs within the cache window are fetched once."""
        image = self._cache.get(url.url)
        if image is None:
            key = (url.url, max_bytes)  # a smaller cap must not fail a request with a larger one
            if key not in self._in_flight:
                fetching = self._fetch_bounded(url, max_bytes, noun, timeout)
                task = asyncio.ensure_future(fetching)
                self._in_flight[key] = task
                task.add_done_callback(lambda done: self._settle(key, done))
            image = await asyncio.shield(self._in_flight[key])
        if len(image.data) > max_bytes:  # cached for a request whose limit was larger
            raise _too_large(url, max_bytes, noun)
        return image

    def _settle(self, key: tuple[str, int], task: asyncio.Future[FetchedImage]) -> None:
        self._in_flight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: the waiters may all have gone away

    async def _fetch_bounded(
        self, url: HttpURL, max_bytes: int, noun: str, timeout: float | None
    ) -> FetchedImage:
        timeout = timeout or self._settings.fetch_timeout
        try:
            async with asyncio.timeout(timeout):
                image = await self._follow(url, max_bytes, noun)
        except TimeoutError:
            raise ImageFetchError(
                f"Fetching the {noun} '{shorten(url.url)}' took longer than {timeout:g} s."
            ) from None
        self._cache.put(url.url, image, len(image.data))
        return image

    async def _follow(self, url: HttpURL, max_bytes: int, noun: str) -> FetchedImage:
        headers = {"accept": f"{noun}/*"}
        for _ in range(self._settings.max_redirects + 1):
            self._check_domain(url, noun)
            with _translate_errors(url, noun):
                async with self._client.stream("GET", url.url, headers=headers) as response:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECTS and location:
                        url = parse_http_url(urljoin(url.url, location))
                        continue
                    if response.status_code != 200:
                        raise ImageFetchError(
                            f"Fetching the {noun} '{shorten(url.url)}' failed: "
                            f"the server answered HTTP {response.status_code}."
                        )
                    data = await _read_capped(response, url, max_bytes, noun)
                    return FetchedImage(data, response.headers.get("content-type"))
        raise ImageFetchError(
            f"Fetching the {noun} '{shorten(url.url)}' failed: more than "
            f"{self._settings.max_redirects} redirects."
        )

    def _check_domain(self, url: HttpURL, noun: str) -> None:
        allowed = self._settings.allowed_domains
        if allowed and not _domain_allowed(url.host, allowed):
            raise BlockedImageURLError(
                f"The {noun} URL '{shorten(url.url)}' was refused: its host '{url.host}' is not "
                "in the allowed domains (images.allowed_domains)."
            )


def _domain_allowed(host: str, allowed: Iterable[str]) -> bool:
    """'example.com' admits only that host; '*.example.com' admits its subdomains too."""
    for entry in allowed:
        if entry.startswith("*."):
            if host == entry[2:] or host.endswith(entry[1:]):
                return True
        elif host == entry:
            return True
    return False


async def _read_capped(response: httpx.Response, url: HttpURL, max_bytes: int, noun: str) -> bytes:
    """The body, or an error as soon as it passes `max_bytes` (the rest is never read)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(url, max_bytes, noun)
    chunks, total = [], 0
    async for chunk in response.aiter_raw():
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(url, max_bytes, noun)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(url: HttpURL, max_bytes: int, noun: str = "image") -> ImageTooLargeError:
    return ImageTooLargeError(
        f"The {noun} at '{shorten(url.url)}' is larger than the limit of {max_bytes} bytes."
    )


@contextlib.contextmanager
def _translate_errors(url: HttpURL, noun: str) -> Iterator[None]:
    """Transport failures in our own words: socket error text may name internal hosts."""
    where = shorten(url.url)
    try:
        yield
    except _Refused as exc:
        raise BlockedImageURLError(
            f"The {noun} URL '{where}' was refused: {exc.reason}. Private and internal "
            "addresses are not fetched (see images.allow_private_networks)."
        ) from None
    except httpx.TimeoutException:
        raise ImageFetchError(f"Fetching the {noun} '{where}' timed out.") from None
    except httpx.ConnectError:
        raise ImageFetchError(f"Fetching the {noun} '{where}' failed: could not connect.") from None
    except httpx.HTTPError:
        raise ImageFetchError(
            f"Fetching the {noun} '{where}' failed: the connection broke or "
            "the answer was not valid HTTP."
        ) from None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
