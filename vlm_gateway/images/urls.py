"""The one URL parser: every decision about an image URL (scheme, host, port, allowlist, the
address dialled) is made on what this module returns, and the fetcher only ever sees the
canonical form it builds. Anything another parser could read differently is refused rather
than guessed at: backslashes, userinfo, percent-encoded or non-canonical numeric hosts (decimal,
octal, hex, short IPv4 forms), whitespace and control characters, IPv6 zone ids."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import quote

import idna

from vlm_gateway.core.image_errors import InvalidImageURLError, shorten

MAX_URL_LENGTH = 8192
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?")
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(\.{_OCTET}){{3}}")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Characters left as they are in a path: RFC 3986 pchar, "/", "?" and existing escapes.
_PATH_SAFE = "/?%:@!$&'()*+,;=~-._"


@dataclass(frozen=True)
class HttpURL:
    scheme: str  # "http" | "https"
    host: str  # lower-case ASCII (IDNA) name, or an IP literal without brackets
    port: int
    target: str  # path and query, as sent on the request line
    is_ip: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if _DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.target}"


def scheme_of(url: str) -> str | None:
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else None


def parse_http_url(url: str) -> HttpURL:
    """Parse an http(s) URL strictly; raises InvalidImageURLError naming what is wrong."""
    _check_characters(url)
    scheme = scheme_of(url)
    if scheme not in _DEFAULT_PORTS:
        raise _bad(url, "only http and https URLs are fetched")
    rest = url[len(scheme) + 1 :]
    if not rest.startswith("//"):
        raise _bad(url, "expected '//' after the scheme")
    rest = rest[2:]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, target = rest[:end], rest[end:].partition("#")[0]
    host, port, is_ip = _parse_authority(url, authority, _DEFAULT_PORTS[scheme])
    if not target.startswith("/"):
        target = "/" + target
    return HttpURL(scheme, host, port, quote(target, safe=_PATH_SAFE), is_ip)


def _check_characters(url: str) -> None:
    if len(url) > MAX_URL_LENGTH:
        raise _bad(url, f"longer than {MAX_URL_LENGTH} characters")
    if "\\" in url:
        raise _bad(url, "backslashes are not allowed")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise _bad(url, "whitespace and control characters are not allowed")


def _parse_authority(url: str, authority: str, default_port: int) -> tuple[str, int, bool]:
    if "@" in authority:
        raise _bad(url, "credentials (user@host) are not allowed")
    if "%" in authority:
        raise _bad(url, "percent-encoded hosts are not allowed")
    if authority.startswith("["):
        literal, bracket, port_text = authority[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise _bad(url, "malformed IPv6 literal")
        try:
            host = str(ipaddress.IPv6Address(literal))
        except ValueError:
            raise _bad(url, "malformed IPv6 literal") from None
        return host, _parse_port(url, port_text[1:], default_port, bool(port_text)), True
    host, colon, port_text = authority.partition(":")
    port = _parse_port(url, port_text, default_port, bool(colon))
    host = _normalize_host(url, host)
    return host, port, _CANONICAL_IPV4.fullmatch(host) is not None


def _parse_port(url: str, text: str, default: int, present: bool) -> int:
    if not present:
        return default
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise _bad(url, "the port must be a number from 1 to 65535")
    return int(text)


def _normalize_host(url: str, host: str) -> str:
    if not host:
        raise _bad(url, "the host is missing")
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise _bad(url, "the host is not a valid internationalized domain name") from None
    host = host.lower()
    host = host[:-1] if host.endswith(".") else host
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # Browsers and libc read 2130706433, 0x7f.1, 0177.0.0.1 and 127.1 as IPv4 addresses;
        # only the canonical dotted quad means the same thing to every parser.
        if not _CANONICAL_IPV4.fullmatch(host):
            raise _bad(url, "numeric hosts must be written as a plain dotted IPv4 address")
        return host
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise _bad(url, "the host name is not valid")
    return host


def _bad(url: str, why: str) -> InvalidImageURLError:
    return InvalidImageURLError(f"Invalid image URL '{shorten(url)}': {why}.")
