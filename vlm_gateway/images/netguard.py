"""Which IP addresses the image fetcher may dial, and why not when it may not."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# (range, reason, admitted by allow_private_networks). Order matters: first match wins.
_RANGES: list[tuple[str, str, bool]] = [
    ("169.254.169.254/32", "a cloud metadata address", False),
    ("fd00:ec2::254/128", "a cloud metadata address", False),
    ("0.0.0.0/8", "an unspecified ('this network') address", False),
    ("10.0.0.0/8", "a private (RFC 1918) address", True),
    ("100.64.0.0/10", "a shared (CGNAT, RFC 6598) address", True),
    ("127.0.0.0/8", "a loopback address", True),
    ("169.254.0.0/16", "a link-local address", True),
    ("172.16.0.0/12", "a private (RFC 1918) address", True),
    ("192.0.0.0/24", "a reserved (IETF protocol) address", False),
    ("192.0.2.0/24", "a reserved (documentation) address", False),
    ("192.168.0.0/16", "a private (RFC 1918) address", True),
    ("198.18.0.0/15", "a reserved (benchmarking) address", False),
    ("198.51.100.0/24", "a reserved (documentation) address", False),
    ("203.0.113.0/24", "a reserved (documentation) address", False),
    ("224.0.0.0/4", "a multicast address", False),
    ("240.0.0.0/4", "a reserved address", False),
    ("::/128", "an unspecified address", False),
    ("::1/128", "a loopback address", True),
    ("::ffff:0:0/96", "an IPv4-mapped IPv6 address", False),
    ("::/96", "an IPv4-compatible IPv6 address", False),
    ("100::/64", "a reserved (discard) address", False),
    ("2001::/32", "a Teredo tunnel address", False),
    ("2001:db8::/32", "a reserved (documentation) address", False),
    ("fc00::/7", "a unique-local (private) IPv6 address", True),
    ("fe80::/10", "a link-local address", True),
    ("fec0::/10", "a site-local address", True),
    ("ff00::/8", "a multicast address", False),
]
_BLOCKED = [(ipaddress.ip_network(cidr), reason, opt_in) for cidr, reason, opt_in in _RANGES]
# IPv6 prefixes that carry an IPv4 address which is what the packets really reach.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


@dataclass(frozen=True)
class AddressPolicy:
    allow_private_networks: bool = False
    allowed_networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def build(cls, allow_private: bool, networks: Iterable[str] = ()) -> AddressPolicy:
        parsed = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in networks)
        return cls(allow_private, parsed)

    def refusal(self, address: str) -> str | None:
        """None if the address may be dialled, else why not (for the client's error)."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return "not a plain IP address"
        if any(ip in network for network in self.allowed_networks if network.version == ip.version):
            return None
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            reason = self.refusal(str(embedded))
            return None if reason is None else f"{reason} inside an IPv6 address"
        for network, reason, opt_in in _BLOCKED:
            if network.version == ip.version and ip in network:
                return None if opt_in and self.allow_private_networks else reason
        if not ip.is_global:
            return "not a public address"
        return None


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if ip.version == 6 and ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.version == 6 and ip in _SIX_TO_FOUR:
        return ip.sixtofour
    return None
