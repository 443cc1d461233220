"""The SSRF corpus for the image fetcher, one case per rule of issue 5 item 1.

DNS is faked at the fetcher's resolver seam, and every socket the fetcher opens goes through
`LoopbackOnly`, which refuses (and records) anything but 127.0.0.1: no test can ever dial a
private or public address, and each refusal is shown to happen before any connection."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess

import httpcore
import pytest

from tests.support.image_server import ImageServer
from tests.support.images import png_bytes
from vlm_gateway.core.image_errors import ImageError
from vlm_gateway.images.fetch import ImageFetcher
from vlm_gateway.images.settings import ImageSettings
from vlm_gateway.images.urls import parse_http_url

PNG = png_bytes(32, 32)
LOOPBACK_ONLY = {"allowed_networks": ["127.0.0.1/32"]}


class FakeResolver:
    """Answers from a table; a list of answer lists is used one per call (rebinding)."""

    def __init__(self, table: dict[str, list[str] | list[list[str]]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        answers = self.table.get(host)
        if answers is None:
            raise OSError("name not known")
        if answers and isinstance(answers[0], list):
            return answers[min(self.calls.count(host), len(answers)) - 1]
        return answers


class LoopbackOnly(httpcore.AsyncNetworkBackend):
    """The real network, for 127.0.0.1 only; anything else fails the test."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.dialled: list[str] = []

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.dialled.append(host)
        assert host == "127.0.0.1", f"the fetcher tried to dial {host}"
        return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def fetch(
    url: str,
    resolver: FakeResolver | None = None,
    max_bytes: int = 1 << 20,
    network: LoopbackOnly | None = None,
    repeat: int = 1,
    **settings,
) -> bytes:
    network = network or LoopbackOnly()

    async def run() -> bytes:
        fetcher = ImageFetcher(ImageSettings(**settings), resolver or FakeResolver({}), network)
        try:
            for _ in range(repeat):
                result = await fetcher.fetch(parse_http_url(url), max_bytes)
            return result.data
        finally:
            await fetcher.aclose()

    return asyncio.run(run())


def refused(url: str, resolver: FakeResolver | None = None, **kwargs) -> tuple[str, LoopbackOnly]:
    network = LoopbackOnly()
    with pytest.raises(ImageError) as caught:
        fetch(url, resolver, network=network, **kwargs)
    assert caught.value.status_code == 400
    return caught.value.message, network


@pytest.fixture(scope="module")
def server():
    with ImageServer({"/cat.png": PNG, "/big.png": b"\x89PNG" + b"\0" * 300_000}) as server:
        yield server


# -- blocked ranges: DNS answers checked before any connection --------------------------------

BLOCKED_ANSWERS = [
    ("127.0.0.1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "metadata"),
    ("169.254.7.7", "link-local"),
    ("100.64.0.1", "CGNAT"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("0.0.0.0", "unspecified"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fe80::1", "link-local"),
    ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "IPv4-mapped"),
    ("::ffff:8.8.8.8", "IPv4-mapped"),
    ("::127.0.0.1", "IPv4-compatible"),
    ("64:ff9b::a00:1", "private"),
    ("2002:a00:1::", "private"),
    ("2001:db8::1", "documentation"),
]


@pytest.mark.parametrize("address,reason", BLOCKED_ANSWERS)
def test_a_name_resolving_to_a_blocked_range_is_refused_before_connecting(address, reason):
    message, network = refused(
        "http://images.test/cat.png", FakeResolver({"images.test": [address]})
    )
    assert reason in message and address in message
    assert network.dialled == []


@pytest.mark.parametrize(
    "url,reason",
    [
        ("http://127.0.0.1/x.png", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[::1]/x.png", "loopback"),
        ("http://[::ffff:10.0.0.1]/x.png", "IPv4-mapped"),
        ("http://10.0.0.1:8080/x.png", "private"),
        ("http://0.0.0.0/x.png", "unspecified"),
    ],
)
def test_literal_internal_addresses_are_refused_without_dns(url, reason):
    resolver = FakeResolver({})
    message, network = refused(url, resolver)
    assert reason in message
    assert resolver.calls == [] and network.dialled == []


def test_one_private_answer_among_public_ones_refuses_the_whole_name():
    resolver = FakeResolver({"mixed.test": ["93.184.216.34", "10.0.0.7"]})
    message, network = refused("http://mixed.test/cat.png", resolver)
    assert "10.0.0.7" in message and network.dialled == []


def test_a_name_that_does_not_resolve_is_refused():
    message, _ = refused("http://nowhere.test/cat.png", FakeResolver({}))
    assert "does not resolve" in message


def test_dns_is_resolved_once_and_the_checked_address_is_dialled(server):
    """Rebinding: the first answer passes the check, every later one is internal. The fetch
    dials the checked address and never asks DNS again; Host stays the name."""
    resolver = FakeResolver({"rebind.test": [["127.0.0.1"], ["10.0.0.1"]]})
    network = LoopbackOnly()
    data = fetch(
        f"http://rebind.test:{server.port}/cat.png", resolver, network=network, **LOOPBACK_ONLY
    )
    assert data == PNG
    assert resolver.calls == ["rebind.test"] and network.dialled == ["127.0.0.1"]
    assert server.hosts[-1] == f"rebind.test:{server.port}"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for images.test only (no 127.0.0.1 in it)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    work = tmp_path_factory.mktemp("tls")
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=images.test",
            "-addext",
            "subjectAltName=DNS:images.test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_dials_the_checked_address_with_the_names_sni_and_certificate(tls_files):
    cert, key = tls_files
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    resolver = FakeResolver({"images.test": ["127.0.0.1"]})
    network = LoopbackOnly()
    with ImageServer({"/cat.png": PNG}, tls=server_tls) as server:
        url = f"https://images.test:{server.port}/cat.png"

        async def run() -> bytes:
            fetcher = ImageFetcher(ImageSettings(**LOOPBACK_ONLY), resolver, network, client_tls)
            try:
                return (await fetcher.fetch(parse_http_url(url), 1 << 20)).data
            finally:
                await fetcher.aclose()

        assert asyncio.run(run()) == PNG
    assert network.dialled == ["127.0.0.1"]
    assert server.sni == ["images.test"] and server.hosts == [f"images.test:{server.port}"]


# -- redirects ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target,reason",
    [
        ("http://10.0.0.1/secret", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://internal.test/admin", "private"),
        ("http://[::1]:8080/", "loopback"),
    ],
)
def test_a_redirect_to_an_internal_address_is_refused_before_connecting_to_it(
    server, target, reason
):
    resolver = FakeResolver({"internal.test": ["192.168.0.10"]})
    message, network = refused(server.url(f"/redirect?to={target}"), resolver, **LOOPBACK_ONLY)
    assert reason in message
    assert set(network.dialled) == {"127.0.0.1"}  # only the loopback test server


@pytest.mark.parametrize(
    "target",
    [
        "file:///etc/passwd",
        "gopher://127.0.0.1/x",
        "http://user:pw@127.0.0.1/x",
        "http://2130706433/x",
    ],
)
def test_a_redirect_to_a_forbidden_url_form_is_refused(server, target):
    message, _ = refused(server.url(f"/redirect?to={target}"), **LOOPBACK_ONLY)
    assert "Invalid image URL" in message


def _chain(server: ImageServer, hops: int) -> str:
    url = server.url("/cat.png")
    for _ in range(hops):
        url = server.url("/redirect?to=" + url.replace("&", "%26").replace("?", "%3F"))
    return url


def test_at_most_five_redirects_are_followed(server):
    assert fetch(_chain(server, 5), **LOOPBACK_ONLY) == PNG
    message, _ = refused(_chain(server, 6), **LOOPBACK_ONLY)
    assert "more than 5 redirects" in message


# -- deadline, byte cap, user agent, opt-ins ------------------------------------------------------


def test_the_total_deadline_bounds_a_stalled_server(server):
    # /stall never answers: only the fetch deadline can end this, and the message names it.
    message, _ = refused(server.url("/stall"), fetch_timeout=0.5, **LOOPBACK_ONLY)
    assert "longer than 0.5 s" in message


def test_the_byte_cap_refuses_a_declared_length_over_it(server):
    message, _ = refused(server.url("/big.png"), max_bytes=100_000, **LOOPBACK_ONLY)
    assert "larger than the limit of 100000 bytes" in message


def test_the_byte_cap_is_enforced_while_reading_an_endless_body(server):
    message, _ = refused(server.url("/endless"), max_bytes=1_000_000, **LOOPBACK_ONLY)
    assert "larger than the limit" in message


def test_fetches_send_a_user_agent(server):
    fetch(server.url("/cat.png"), user_agent="vlm-gateway-test/1", **LOOPBACK_ONLY)
    assert server.user_agents[-1] == "vlm-gateway-test/1"


def test_a_server_error_is_a_400_naming_the_status(server):
    message, _ = refused(server.url("/missing.png"), **LOOPBACK_ONLY)
    assert "HTTP 404" in message


def test_allow_private_networks_admits_the_loopback_server(server):
    assert fetch(server.url("/cat.png"), allow_private_networks=True) == PNG


def test_allow_private_networks_still_refuses_metadata_and_multicast():
    for address in ("169.254.169.254", "224.0.0.1", "0.0.0.0"):
        refused("http://x.test/", FakeResolver({"x.test": [address]}), allow_private_networks=True)


def test_the_domain_allowlist_admits_only_listed_hosts(server):
    resolver = FakeResolver(
        {
            "images.test": ["127.0.0.1"],
            "cdn.images.test": ["127.0.0.1"],
            "other.test": ["127.0.0.1"],
        }
    )
    allow = {"allowed_domains": ["*.images.test"], **LOOPBACK_ONLY}
    assert fetch(f"http://cdn.images.test:{server.port}/cat.png", resolver, **allow) == PNG
    assert fetch(f"http://images.test:{server.port}/cat.png", resolver, **allow) == PNG
    message, network = refused(f"http://other.test:{server.port}/cat.png", resolver, **allow)
    assert "allowed domains" in message and network.dialled == []


def test_the_allowlist_is_rechecked_on_every_redirect_hop(server):
    resolver = FakeResolver({"images.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    start = f"http://images.test:{server.port}/redirect?to=http://other.test:{server.port}/cat.png"
    message, _ = refused(start, resolver, allowed_domains=["images.test"], **LOOPBACK_ONLY)
    assert "other.test" in message and "allowed domains" in message


def test_an_internationalized_host_is_resolved_as_its_idna_form():
    resolver = FakeResolver({})
    refused("http://bücher.test/x.png", resolver)
    assert resolver.calls == ["xn--bcher-kva.test"]


# -- the cache ------------------------------------------------------------------------------------


def test_identical_urls_within_the_window_are_fetched_once(server):
    server.files["/once.png"] = PNG
    assert fetch(server.url("/once.png"), repeat=3, **LOOPBACK_ONLY) == PNG
    assert server.hits["/once.png"] == 1


def test_concurrent_identical_fetches_share_one_request(server):
    server.files["/together.png"] = PNG

    async def run() -> None:
        fetcher = ImageFetcher(ImageSettings(**LOOPBACK_ONLY), FakeResolver({}), LoopbackOnly())
        url = parse_http_url(server.url("/together.png"))
        try:
            results = await asyncio.gather(*(fetcher.fetch(url, 1 << 20) for _ in range(5)))
        finally:
            await fetcher.aclose()
        assert all(result.data == PNG for result in results)

    asyncio.run(run())
    assert server.hits["/together.png"] == 1
