"""Where webhooks may go: `https://` URLs of public addresses, unless `[webhooks_policy] allow_private`.

Why: an endpoint added through the API names any URL, so without a policy a client could make the
server POST (signed, periodically, with retries) to cloud metadata services (169.254.169.254), admin
ports on loopback or the private network. The rules are those of bring-your-own-storage
(`callrec.storage.address_policy.address_refusal`: loopback, private, link-local, CGNAT, IPv4 wrapped in
IPv6, ...), applied twice:

- when an endpoint is added (`check_url` for the URL's shape and IP literals, `check_addresses` for a
  name's DNS answers), so a mistake is reported to whoever made it;
- on every connection (`WebhookResolver`, aiohttp's resolver hook), which hands aiohttp exactly the
  addresses it checked, so a name cannot pass with a public answer and later connect to a private one
  (DNS rebinding). aiohttp skips resolvers for IP literals: the dispatcher calls `check_url` before
  every attempt, which checks those (a literal cannot be rebound).

With `allow_private = true` (a receiver on the same host or network) plain `http://` is allowed too and
no address is checked. Redirects are never followed (elsewhere), so a public receiver cannot bounce a
request inward either.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

from callrec.security.redact import redact_url
from callrec.storage.address_policy import (
    AddressRefused,
    IPAddress,
    Resolve,
    UnresolvableHost,
    address_refusal,
    normalize_host,
    parse_ip,
    pinned_results,
    system_resolve,
)
from callrec.webhooks.errors import InvalidWebhook, WebhookRefused

SETTING = "[webhooks_policy] allow_private"
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class WebhookTarget:
    """A webhook URL, checked for shape: what a connection to it needs."""

    url: str
    scheme: str
    host: str
    """Lower case, no brackets (IPv6), IDNA for non-ASCII names."""
    port: int


def check_url(url: str, *, allow_private: bool) -> WebhookTarget:
    """The URL's parts if its shape (and an IP-literal host) is allowed; `InvalidWebhook`/`WebhookRefused` not.

    No DNS here (see `check_addresses`): this runs before every attempt.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidWebhook("a webhook URL is required, e.g. https://example.com/callrec")
    text = url.strip()
    shown = redact_url(text)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidWebhook(f"webhook URL {shown!r} is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise InvalidWebhook(f"webhook URL {shown!r} must be an absolute https:// URL, e.g. https://example.com/callrec")
    if scheme == "http" and not allow_private:
        raise WebhookRefused(
            f"webhook URL {shown!r} is plain http://; webhooks go over https:// unless `{SETTING} = true` "
            "(for receivers on the same host or network)"
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhook(
            f"webhook URL {shown!r} carries a user name or password; receivers authenticate deliveries by their "
            "`webhook-signature` instead"
        )
    if parts.fragment:
        raise InvalidWebhook(f"webhook URL {shown!r} has a #fragment, which is never sent; remove it")
    host = normalize_host(parts.hostname)
    target = WebhookTarget(text, scheme, host, port or DEFAULT_PORTS[scheme])
    literal = parse_ip(host)
    if literal is not None and not allow_private:
        _check_address(target.host, literal, resolved=False)
    return target


def check_addresses(host: str, port: int, *, allow_private: bool, resolve: Resolve = system_resolve) -> list[IPAddress]:
    """Resolve `host` and return its addresses if every one is public (blocking: run it in a thread).

    With `allow_private` nothing is resolved or checked (an empty list). Raises `WebhookRefused` for a
    refused address and `UnresolvableHost` when the name has no address. A name with several answers is
    refused if any one is refused (a mix of public and private answers is what rebinding looks like).
    """
    if allow_private:
        return []
    literal = parse_ip(host)
    if literal is not None:
        _check_address(host, literal, resolved=False)
        return [literal]
    name = normalize_host(host)
    try:
        answers = list(resolve(name, port))
    except UnicodeError:
        raise UnresolvableHost(f"webhook host {host!r} is not a valid host name") from None
    except OSError as exc:
        raise UnresolvableHost(f"webhook host {host!r} does not resolve ({exc.strerror or exc})") from None
    addresses: list[IPAddress] = []
    for answer in answers:
        try:
            address = ipaddress.ip_address(answer.split("%", 1)[0])
        except ValueError:
            raise WebhookRefused(f"webhook host {host!r} resolved to {answer!r}, which is not an IP address") from None
        _check_address(host, address, resolved=True)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnresolvableHost(f"webhook host {host!r} does not resolve to any address")
    return addresses


def _check_address(host: str, address: IPAddress, *, resolved: bool) -> None:
    reason = address_refusal(address)
    if reason is None:
        return
    what = f"webhook host {host!r} resolves to {address}, which is" if resolved else f"webhook host {host!r} is"
    raise WebhookRefused(
        f"{what} a {reason} address; webhooks go only to public addresses unless `{SETTING} = true`"
    )


class WebhookResolver(AbstractResolver):
    """aiohttp resolver that applies `check_addresses` on every connection and pins the checked addresses.

    Raises `AddressRefused` (an `OSError`, which aiohttp passes on as a connection error) when the policy
    refuses the host; the dispatcher records it as the attempt's error and retries on the schedule.
    """

    def __init__(self, *, resolve: Resolve = system_resolve) -> None:
        self._resolve = resolve

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The checked addresses of `host`, filtered to the family aiohttp asks for."""
        try:
            addresses = await asyncio.to_thread(
                check_addresses, host, port, allow_private=False, resolve=self._resolve
            )
        except WebhookRefused as exc:
            raise AddressRefused(str(exc)) from None
        except UnresolvableHost as exc:
            raise OSError(str(exc)) from None
        return pinned_results(host, port, family, addresses)

    async def close(self) -> None:
        """Nothing to release (resolution runs in the default thread pool)."""
        return None
