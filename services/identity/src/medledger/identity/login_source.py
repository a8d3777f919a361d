"""Where a login comes from, as the login throttle counts it.

The source is the gRPC peer's address. Behind a proxy (an ingress controller, a gateway, a
load balancer terminating TLS) every caller has the proxy's address, so the proxies'
networks are configured as trusted (``IDENTITY_TRUSTED_PROXIES``): from a trusted peer, the
source is the right-most address of ``x-forwarded-for`` that is not itself a trusted proxy
(the one the outermost trusted proxy saw). From any other peer the header is ignored, as
anyone can send it. IPv6 sources count by /64, the block one host is usually given.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDED_FOR: Final = "x-forwarded-for"
IPV6_SOURCE_PREFIX: Final = 64
MAX_FORWARDED_HOPS: Final = 32


def trusted_networks(text: str) -> tuple[IPNetwork, ...]:
    """Comma-separated CIDRs (or addresses); ValueError naming the first bad one."""
    networks: list[IPNetwork] = []
    for item in (part.strip() for part in text.split(",")):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP network") from None
    return tuple(networks)


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _peer_address(peer: str) -> IPAddress | None:
    """The address of a gRPC peer string (``ipv4:10.0.0.1:5000``, ``ipv6:[::1]:5000``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return _address(rest.rsplit(":", 1)[0])
    if kind == "ipv6":
        return _address(rest.rsplit(":", 1)[0] if rest.startswith("[") else rest)
    return None


def _source(address: IPAddress) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, IPV6_SOURCE_PREFIX), strict=False))
    return str(address)


def _trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in trusted)


def login_source(peer: str, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]) -> str:
    """The source of a call from ``peer`` carrying these ``x-forwarded-for`` values."""
    address = _peer_address(peer)
    if address is None:
        return peer.partition(":")[0] or "unknown"  # a Unix socket: one local source
    if not _trusted(address, trusted):
        return _source(address)
    hops = [hop for value in forwarded_for for hop in value.split(",")][-MAX_FORWARDED_HOPS:]
    for hop in reversed(hops):
        forwarded = _address(hop)
        if forwarded is None:
            break  # a hop no proxy of ours wrote: trust nothing before it
        if not _trusted(forwarded, trusted):
            return _source(forwarded)
        address = forwarded
    return _source(address)
