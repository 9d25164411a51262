"""The bring-your-own-storage address policy and allow list (callrec.storage.address_policy), without traffic.

Every test injects its resolver (a dict of host -> answers), so no DNS query and no connection is made.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from ipaddress import ip_address

import pytest

from callrec.storage.address_policy import (
    AddressRefused,
    DestinationRefused,
    PolicyResolver,
    UnresolvableHost,
    address_refusal,
    check_destination,
    find_allowed,
    find_refusal,
    is_listed,
    parse_allow_entry,
    parse_allow_list,
)


def fake_dns(answers: dict[str, list[str]]):
    """A resolver answering from `answers` and recording what it was asked (never the network)."""
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> Iterable[str]:
        asked.append((host, port))
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    resolve.asked = asked  # type: ignore[attr-defined]  # test helper
    return resolve


def no_dns(host: str, port: int) -> Iterable[str]:
    raise AssertionError(f"the resolver must not be called for {host!r}")


REFUSED = [
    # IPv4 special purpose
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "private"),  # "this network"
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),  # cloud metadata services
    ("169.254.0.1", "link-local"),
    ("100.64.0.1", "shared (carrier-grade NAT)"),
    ("100.127.255.254", "shared (carrier-grade NAT)"),
    ("192.0.0.8", "special-purpose (IETF protocol assignments)"),
    ("192.0.0.170", "special-purpose (IETF protocol assignments)"),
    ("192.88.99.1", "special-purpose (6to4 relay anycast)"),
    ("192.0.2.10", "private"),  # TEST-NET-1
    ("198.18.0.1", "private"),  # benchmarking
    ("198.51.100.7", "private"),
    ("203.0.113.9", "private"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    # IPv6
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fc00::1", "private"),
    ("fd12:3456:789a::1", "private"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "private"),  # documentation
    ("100::1", "reserved"),  # discard-only
    # IPv4 inside IPv6
    ("::ffff:127.0.0.1", "loopback (IPv4 127.0.0.1 inside IPv6)"),
    ("::ffff:10.1.2.3", "private (IPv4 10.1.2.3 inside IPv6)"),
    ("::ffff:169.254.169.254", "link-local (IPv4 169.254.169.254 inside IPv6)"),
    ("::ffff:0.0.0.0", "unspecified (IPv4 0.0.0.0 inside IPv6)"),
    ("::ffff:7f00:1", "loopback (IPv4 127.0.0.1 inside IPv6)"),
    ("64:ff9b::7f00:1", "loopback (IPv4 127.0.0.1 inside IPv6)"),  # NAT64
    ("64:ff9b::a9fe:a9fe", "link-local (IPv4 169.254.169.254 inside IPv6)"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("2002:7f00:1::1", "loopback (IPv4 127.0.0.1 inside IPv6)"),  # 6to4
    ("2002:c0a8:101::1", "private (IPv4 192.168.1.1 inside IPv6)"),
    ("::127.0.0.1", "IPv4-compatible loopback (deprecated)"),
    ("::8.8.8.8", "IPv4-compatible address (deprecated)"),
]

PUBLIC = ["8.8.8.8", "1.1.1.1", "20.60.1.4", "52.216.0.1", "2606:4700:4700::1111", "2a00:1450:4001::1",
          "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_special_purpose_addresses_are_refused(address: str, reason: str) -> None:
    assert address_refusal(ip_address(address)) == reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ip_address(address)) is None


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_ip_literal_hosts_are_checked_without_resolving(address: str, reason: str) -> None:
    with pytest.raises(DestinationRefused, match="refused for client-chosen storage") as info:
        check_destination(address, 443, resolve=no_dns)
    assert reason.split(" (")[0] in str(info.value)
    assert "[storage.external] allow" in str(info.value)


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_names_are_checked_after_resolution(address: str, reason: str) -> None:
    dns = fake_dns({"evil.example.com": [address.split("%")[0]]})
    with pytest.raises(DestinationRefused) as info:
        check_destination("evil.example.com", 443, ["*.example.com"], resolve=dns)
    assert f"resolves to {ip_address(address.split('%')[0])}" in str(info.value)
    assert dns.asked == [("evil.example.com", 443)]  # type: ignore[attr-defined]


def test_a_public_name_returns_the_checked_addresses() -> None:
    dns = fake_dns({"acct.blob.core.windows.net": ["20.60.1.4", "20.60.1.4", "2603:1030::4"]})
    assert check_destination("ACCT.blob.core.windows.net.", 443, resolve=dns) == [
        ip_address("20.60.1.4"),
        ip_address("2603:1030::4"),
    ]


def test_one_private_answer_among_public_ones_refuses_the_name() -> None:
    dns = fake_dns({"rebind.example.com": ["93.184.216.34", "127.0.0.1"]})
    with pytest.raises(DestinationRefused, match="loopback"):
        check_destination("rebind.example.com", 443, resolve=dns)


def test_names_that_look_like_addresses_are_resolved_and_checked() -> None:
    # "127.1", "2130706433" and "0x7f000001" are not IP literals to `ipaddress`, but getaddrinfo maps
    # them onto 127.0.0.1: the check sees the resolved address
    for spelling in ("127.1", "2130706433", "0x7f000001", "localhost", "LOCALHOST."):
        dns = fake_dns({spelling.lower().rstrip("."): ["127.0.0.1"]})
        with pytest.raises(DestinationRefused, match="loopback"):
            check_destination(spelling, 80, resolve=dns)


def test_a_listed_host_may_be_private_but_only_on_its_port() -> None:
    allow = ["127.0.0.1:10000", "minio.internal", "[::1]:9000", "*.example.com"]
    assert check_destination("127.0.0.1", 10000, allow, resolve=no_dns) == [ip_address("127.0.0.1")]
    with pytest.raises(DestinationRefused):
        check_destination("127.0.0.1", 10001, allow, resolve=no_dns)
    assert check_destination("::1", 9000, allow, resolve=no_dns) == [ip_address("::1")]
    dns = fake_dns({"minio.internal": ["10.1.2.3"], "x.example.com": ["10.1.2.3"]})
    # an entry without a port stands for the scheme's default port
    assert check_destination("minio.internal", 443, allow, resolve=dns, default_port=443)
    with pytest.raises(DestinationRefused):
        check_destination("minio.internal", 6379, allow, resolve=dns, default_port=443)
    # a wildcard entry never exempts a host from the address policy
    with pytest.raises(DestinationRefused, match="private"):
        check_destination("x.example.com", 443, allow, resolve=dns, default_port=443)


def test_unresolvable_names() -> None:
    with pytest.raises(UnresolvableHost, match="does not resolve"):
        check_destination("nowhere.invalid", 443, resolve=fake_dns({}))
    with pytest.raises(UnresolvableHost, match="any address"):
        check_destination("empty.example.com", 443, resolve=fake_dns({"empty.example.com": []}))
    with pytest.raises(DestinationRefused, match="not an IP address"):
        check_destination("odd.example.com", 443, resolve=fake_dns({"odd.example.com": ["not-an-ip"]}))


# ------------------------------------------------------------------------------------------ allow list
def test_allow_entries_parse() -> None:
    entry = parse_allow_entry("Acct.Blob.Core.Windows.Net")
    assert (entry.host, entry.port, entry.path, entry.wildcard) == ("acct.blob.core.windows.net", None, (), False)
    entry = parse_allow_entry("127.0.0.1:10000/devstoreaccount1/recs")
    assert (entry.host, entry.port, entry.path) == ("127.0.0.1", 10000, ("devstoreaccount1", "recs"))
    entry = parse_allow_entry("[2001:db8::1]:9000/b")
    assert (entry.host, entry.port, entry.path) == ("2001:db8::1", 9000, ("b",))
    assert parse_allow_entry("*.blob.core.windows.net").wildcard
    assert parse_allow_entry("*").wildcard
    assert parse_allow_list(None) == ()


@pytest.mark.parametrize(
    "text",
    ["", "https://acct.blob.core.windows.net", "host?x=1", "user@host", "host:0", "host:99999", "host:abc",
     "2001:db8::1", "[2001:db8::1", "a*.example.com", "*.*.example.com", "*.", "host name"],
)
def test_bad_allow_entries_are_config_errors(text: str) -> None:
    with pytest.raises(ValueError, match=r"\[storage.external\] allow"):
        parse_allow_entry(text)
    with pytest.raises(ValueError, match="must be a list"):
        parse_allow_list("host")


def test_allow_matching() -> None:
    allow = parse_allow_list(["acct.blob.core.windows.net/recs", "*.blob.core.windows.net", "127.0.0.1:10000/dev"])
    match = find_allowed(allow, "acct.blob.core.windows.net", 443, 443, ["recs", "x"])
    assert match is not None and match.text == "acct.blob.core.windows.net/recs"  # exact preferred
    match = find_allowed(allow, "acct.blob.core.windows.net", 443, 443, ["other"])
    assert match is not None and match.wildcard
    assert find_allowed(allow, "blob.core.windows.net", 443, 443, ["recs"]) is None  # "*.x" is not x itself
    assert find_allowed(allow, "evilblob.core.windows.net", 443, 443, ["recs"]) is None
    assert find_allowed(allow, "acct.blob.core.windows.net.evil.com", 443, 443, ["recs"]) is None
    assert find_allowed(allow, "acct.blob.core.windows.net", 8443, 443, ["recs"]) is None  # other port
    assert find_allowed(allow, "127.0.0.1", 10000, 80, ["dev", "c"]) is not None
    assert find_allowed(allow, "127.0.0.1", 10000, 80, ["devx", "c"]) is None  # whole segments only
    assert find_allowed(allow, "127.0.0.1", 10001, 80, ["dev", "c"]) is None
    assert is_listed(allow, "127.0.0.1", 10000) and not is_listed(allow, "x.blob.core.windows.net", 443, 443)


# ------------------------------------------------------------------------------ at connection time
async def test_the_connection_resolver_pins_the_checked_addresses() -> None:
    dns = fake_dns({"acct.example.com": ["93.184.216.34", "2606:2800:220:1::1"]})
    resolver = PolicyResolver(parse_allow_list(["*.example.com"]), 443, resolve=dns)
    results = await resolver.resolve("acct.example.com", 443, family=socket.AF_UNSPEC)
    assert [(r["host"], r["family"], r["port"]) for r in results] == [
        ("93.184.216.34", socket.AF_INET, 443),
        ("2606:2800:220:1::1", socket.AF_INET6, 443),
    ]
    only_v4 = await resolver.resolve("acct.example.com", 443, family=socket.AF_INET)
    assert [r["host"] for r in only_v4] == ["93.184.216.34"]


async def test_the_connection_resolver_refuses_a_rebound_name() -> None:
    answers = {"acct.example.com": ["93.184.216.34"]}
    resolver = PolicyResolver(parse_allow_list(["*.example.com"]), 443, resolve=fake_dns(answers))
    assert await resolver.resolve("acct.example.com", 443, family=socket.AF_UNSPEC)
    answers["acct.example.com"] = ["169.254.169.254"]  # the name now points at the metadata service
    with pytest.raises(AddressRefused, match="link-local") as info:
        await resolver.resolve("acct.example.com", 443, family=socket.AF_UNSPEC)
    wrapped = ConnectionError("cannot connect")
    wrapped.__cause__ = info.value
    assert find_refusal(RuntimeError("outer")) is None
    outer = RuntimeError("outer")
    outer.__context__ = wrapped
    assert find_refusal(outer) is info.value
