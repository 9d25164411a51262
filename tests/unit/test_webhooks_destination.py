"""The webhook address policy as functions, with injected resolvers (no traffic, no real DNS)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable

import pytest

from callrec.storage.address_policy import AddressRefused, UnresolvableHost
from callrec.webhooks.destination import WebhookResolver, check_addresses, check_url
from callrec.webhooks.errors import InvalidWebhook, WebhookRefused

PUBLIC = "93.184.215.14"
PUBLIC6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


def answers(*addresses: str) -> Callable[[str, int], Iterable[str]]:
    def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


def no_such_host(host: str, port: int) -> list[str]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def test_https_urls_of_public_hosts_pass() -> None:
    target = check_url("https://Hooks.Example.com:8443/in?code=k", allow_private=False)
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.com", 8443)
    assert check_url("https://example.com/x", allow_private=False).port == 443
    found = check_addresses("example.com", 443, allow_private=False, resolve=answers(PUBLIC, PUBLIC6, PUBLIC))
    assert [str(a) for a in found] == [PUBLIC, PUBLIC6]


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",
        "https://127.0.0.1/hook",
        "https://[::1]/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://100.64.0.1/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[fe80::1]/hook",
        "https://0.0.0.0/hook",
    ],
)
def test_plain_http_and_non_public_literals_are_refused_unless_allow_private(url: str) -> None:
    with pytest.raises(WebhookRefused) as err:
        check_url(url, allow_private=False)
    assert "allow_private" in str(err.value)
    assert err.value.code == "PERMISSION_DENIED"
    check_url(url, allow_private=True)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "required"),
        ("example.com/hook", "absolute https:// URL"),
        ("ftp://example.com/", "absolute https:// URL"),
        ("https:///path", "absolute https:// URL"),
        ("https://user:secret@example.com/", "user name or password"),
        ("https://example.com/#frag", "fragment"),
        ("https://example.com:99999/", "not a valid URL"),
    ],
)
def test_malformed_urls_are_invalid_arguments(url: str, says: str) -> None:
    with pytest.raises(InvalidWebhook, match=says) as err:
        check_url(url, allow_private=True)
    assert "secret@" not in str(err.value)


@pytest.mark.parametrize(
    ("resolved", "reason"),
    [
        (["127.0.0.1"], "loopback"),
        (["10.0.0.7"], "private"),
        (["169.254.169.254"], "link-local"),
        ([PUBLIC, "192.168.1.1"], "private"),  # a mix is what rebinding looks like
        (["::ffff:10.0.0.1"], "private"),
        (["64:ff9b::7f00:1"], "loopback"),
    ],
)
def test_names_resolving_to_non_public_addresses_are_refused(resolved: list[str], reason: str) -> None:
    with pytest.raises(WebhookRefused, match=f"resolves to .* {reason}"):
        check_addresses("hooks.example.com", 443, allow_private=False, resolve=answers(*resolved))
    assert check_addresses("hooks.example.com", 443, allow_private=True, resolve=answers(*resolved)) == []


def test_unresolvable_and_empty_answers() -> None:
    with pytest.raises(UnresolvableHost, match="does not resolve"):
        check_addresses("nope.invalid", 443, allow_private=False, resolve=no_such_host)
    with pytest.raises(UnresolvableHost, match="any address"):
        check_addresses("empty.example", 443, allow_private=False, resolve=answers())
    with pytest.raises(WebhookRefused, match="not an IP address"):
        check_addresses("odd.example", 443, allow_private=False, resolve=answers("not-an-ip"))


async def test_the_connection_resolver_pins_checked_addresses_and_refuses_a_rebound_name() -> None:
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return [PUBLIC] if len(calls) == 1 else ["127.0.0.1"]

    resolver = WebhookResolver(resolve=rebinding)
    first = await resolver.resolve("hooks.example.com", 443, socket.AF_UNSPEC)
    assert [r["host"] for r in first] == [PUBLIC] and first[0]["port"] == 443
    with pytest.raises(AddressRefused, match="loopback"):
        await resolver.resolve("hooks.example.com", 443, socket.AF_UNSPEC)
    assert calls == ["hooks.example.com", "hooks.example.com"]


async def test_the_connection_resolver_filters_by_family() -> None:
    resolver = WebhookResolver(resolve=answers(PUBLIC, PUBLIC6))
    assert [r["host"] for r in await resolver.resolve("h.example", 443, socket.AF_INET)] == [PUBLIC]
    assert [r["host"] for r in await resolver.resolve("h.example", 443, socket.AF_INET6)] == [PUBLIC6]
    with pytest.raises(AddressRefused, match="family"):
        await WebhookResolver(resolve=answers(PUBLIC)).resolve("h.example", 443, socket.AF_INET6)
    with pytest.raises(OSError, match="does not resolve"):
        await WebhookResolver(resolve=no_such_host).resolve("h.example", 443, socket.AF_INET)
