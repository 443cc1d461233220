"""The one URL parser: canonical forms out, every ambiguous spelling refused."""

from __future__ import annotations

import pytest

from vlm_gateway.core.image_errors import InvalidImageURLError
from vlm_gateway.images.urls import parse_http_url


@pytest.mark.parametrize(
    "url,host,port,target",
    [
        ("http://example.com/a.png", "example.com", 80, "/a.png"),
        ("HTTPS://Example.COM.:8443/a.png?x=1#frag", "example.com", 8443, "/a.png?x=1"),
        ("http://93.184.216.34", "93.184.216.34", 80, "/"),
        ("http://[2606:2800:220:1::]:81/p", "2606:2800:220:1::", 81, "/p"),
        ("http://bücher.example/ä.png", "xn--bcher-kva.example", 80, "/%C3%A4.png"),
        ("http://example.com/a%20b.png", "example.com", 80, "/a%20b.png"),
    ],
)
def test_urls_parse_to_one_canonical_form(url, host, port, target):
    parsed = parse_http_url(url)
    assert (parsed.host, parsed.port, parsed.target) == (host, port, target)
    assert parse_http_url(parsed.url) == parsed  # the canonical form parses to itself


@pytest.mark.parametrize(
    "url,why",
    [
        ("http://example.com\\@127.0.0.1/", "backslashes"),
        ("http:\\\\127.0.0.1\\x", "backslashes"),
        ("http://user:pass@example.com/", "credentials"),
        ("http://example.com@127.0.0.1/", "credentials"),
        ("http://%31%32%37.0.0.1/", "percent-encoded"),
        ("http://127.0.0.1%2f@example.com/", "credentials"),
        ("http://2130706433/", "dotted IPv4"),
        ("http://0x7f000001/", "dotted IPv4"),
        ("http://0x7f.0.0.1/", "dotted IPv4"),
        ("http://0177.0.0.1/", "dotted IPv4"),
        ("http://127.1/", "dotted IPv4"),
        ("http://127.000.000.001/", "dotted IPv4"),
        ("http://[fe80::1%25eth0]/", "percent-encoded"),
        ("http://[::1/", "IPv6"),
        ("http://exa mple.com/", "whitespace"),
        ("http://example.com/\r\nHost: evil", "control"),
        ("http://example.com:0/", "port"),
        ("http://example.com:99999/", "port"),
        ("http://example.com:８０/", "port"),
        ("http:///x.png", "host is missing"),
        ("http:example.com/x.png", "'//'"),
        ("ftp://example.com/x.png", "only http and https"),
        ("javascript:alert(1)", "only http and https"),
        ("http://exa_mple-.com/", "not valid"),
        ("http://xn--/", "not valid"),
    ],
)
def test_ambiguous_or_forbidden_urls_are_refused_with_the_reason(url, why):
    with pytest.raises(InvalidImageURLError) as caught:
        parse_http_url(url)
    assert why in caught.value.message
    assert caught.value.status_code == 400
