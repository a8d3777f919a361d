"""The source a login is throttled by: the gRPC peer, or behind trusted proxies the address
the outermost one saw."""

from __future__ import annotations

import pytest

from medledger.identity.config import IdentityConfig
from medledger.identity.login_source import login_source, trusted_networks

PROXIES = trusted_networks("10.0.0.0/8, fd00::/8")


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # Straight from the caller: the peer, whatever headers it sends.
        ("ipv4:203.0.113.9:41000", [], "203.0.113.9"),
        ("ipv4:203.0.113.9:41000", ["198.51.100.1"], "203.0.113.9"),
        ("ipv6:[2001:db8:1:2:3:4:5:6]:41000", [], "2001:db8:1:2::/64"),
        ("ipv6:[::ffff:203.0.113.9]:41000", [], "203.0.113.9"),
        # Through our proxies: the right-most address they did not write themselves.
        ("ipv4:10.1.2.3:5000", ["198.51.100.1"], "198.51.100.1"),
        ("ipv4:10.1.2.3:5000", ["1.1.1.1, 198.51.100.1, 10.9.9.9"], "198.51.100.1"),
        ("ipv4:10.1.2.3:5000", ["1.1.1.1", "198.51.100.1"], "198.51.100.1"),
        ("ipv6:[fd00::1]:5000", ["2001:db8:aa:bb::7"], "2001:db8:aa:bb::/64"),
        # A spoofed left part cannot choose the source; garbage stops the walk.
        ("ipv4:10.1.2.3:5000", ["evil, 198.51.100.1"], "198.51.100.1"),
        ("ipv4:10.1.2.3:5000", ["198.51.100.1, not-an-address"], "10.1.2.3"),
        ("ipv4:10.1.2.3:5000", [], "10.1.2.3"),
        ("unix:/run/identity.sock", [], "unix"),
    ],
)
def test_login_source(peer: str, forwarded: list[str], expected: str) -> None:
    assert login_source(peer, forwarded, PROXIES) == expected


def test_trusted_proxies_are_checked_at_start() -> None:
    assert IdentityConfig(trusted_proxies="10.0.0.0/8,192.168.1.7").trusted_proxies
    with pytest.raises(ValueError, match="is not an IP network"):
        IdentityConfig(trusted_proxies="10.0.0.0/8,ingress")
