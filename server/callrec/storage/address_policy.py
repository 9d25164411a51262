"""Where bring-your-own-storage may connect: the `[storage.external] allow` list and the address policy.

Why this exists: a StartRecording request names an `external_storage` URL, so without a policy any client
could make the server send HTTP requests (carrying whatever the store client attaches) to any host it
can reach: cloud metadata services (169.254.169.254), admin ports on loopback, the private network.
SPEC §5: bring-your-own-storage goes only where the operator's allow list says, and loopback, private
and link-local addresses are refused unless the host is listed.

Allow-list entries (strings): `HOST`, `HOST:PORT`, `[IPv6]:PORT`, each optionally followed by
`/SEGMENT[/SEGMENT...]` (the leading path segments the URL must have: the container, or for path-style
emulators the account and container). `HOST` is a name or an IP literal, matched exactly
(case-insensitive), or a wildcard: `*.example.net` (any name below example.net, not example.net itself)
or `*` (any host). An entry without a port allows only the scheme's default port (443 for https, 80 for
http), so listing a host does not open its other services to clients.

Address policy (`check_destination`): the host is resolved, and every address it resolves to must be a
public unicast address: loopback, private (RFC 1918, unique-local), link-local, unspecified, multicast,
reserved, carrier-grade-NAT, documentation and other special-purpose ranges are refused, also when
wrapped in IPv6 (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible, NAT64 `64:ff9b::/96`, 6to4). A host is
exempt only when an exact (non-wildcard) entry names it with a matching port: the operator asked for that
host, e.g. an S3 emulator on loopback. A name that resolves to several addresses is refused if any one
is refused (a mix of public and private answers is what a rebinding attack looks like).

DNS rebinding: the check returns the addresses it checked, and `PolicyResolver` (aiohttp's resolver hook)
runs the same check on every connection the upload path opens and hands aiohttp exactly the addresses it
checked, so a name cannot pass the check with a public answer and then connect to a private one.

Everything here is pure except `system_resolve`; tests inject a resolver and send no traffic.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = IPv4Address | IPv6Address
Resolve = Callable[[str, int], Iterable[str]]
"""`(host, port) -> address strings`; raises `socket.gaierror` (an `OSError`) when the name does not resolve."""

SETTING = "[storage.external] allow"
DEFAULT_PORTS = {"http": 80, "https": 443}

_SHARED = IPv4Network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598): not private, not public either
_NAT64 = IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = IPv6Network("::/96")
_SPECIAL_V4 = (  # not globally reachable, yet not `is_private` in every Python version
    (IPv4Network("192.0.0.0/24"), "special-purpose (IETF protocol assignments)"),
    (IPv4Network("192.88.99.0/24"), "special-purpose (6to4 relay anycast)"),
)


class DestinationRefused(ValueError):
    """The allow list or the address policy refuses a destination (PERMISSION_DENIED for clients)."""

    code = "PERMISSION_DENIED"


class UnresolvableHost(ValueError):
    """A destination's host name does not resolve (a typo, most likely: INVALID_ARGUMENT)."""

    code = "INVALID_ARGUMENT"


class AddressRefused(OSError):
    """Raised inside a connection attempt (`PolicyResolver`) when the policy refuses the host's addresses.

    An `OSError` because that is what aiohttp lets through from a resolver (as a connection error);
    stores look for it in an error's causes to report a refusal instead of a transient failure.
    """


# ---------------------------------------------------------------------------------------- allow list
@dataclass(frozen=True)
class AllowEntry:
    """One `[storage.external] allow` string, parsed."""

    text: str
    host: str
    """Lower-case name or IP literal (IPv6 without brackets), `*`, or `*.suffix`."""
    port: int | None
    path: tuple[str, ...] = ()

    @property
    def wildcard(self) -> bool:
        """True for `*` and `*.suffix`: such an entry never exempts a host from the address policy."""
        return self.host.startswith("*")

    def matches_host(self, host: str, port: int, default_port: int | None) -> bool:
        """Whether `host:port` is what this entry names (path not considered)."""
        wanted = self.port if self.port is not None else default_port
        if wanted is None or port != wanted:
            return False
        host = normalize_host(host)
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host

    def matches(self, host: str, port: int, default_port: int | None, segments: Sequence[str]) -> bool:
        """Whether a URL with this host, port and path segments is allowed by this entry."""
        return self.matches_host(host, port, default_port) and tuple(segments[: len(self.path)]) == self.path


def normalize_host(host: str) -> str:
    """Lower case, no brackets, no trailing dot, IDNA (punycode) for non-ASCII names."""
    host = host.strip().strip("[]").rstrip(".").lower()
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host  # never matches an entry (entries are ASCII), and resolution fails


def parse_allow_entry(text: str) -> AllowEntry:
    """Parse one allow-list string; `ValueError` says what is wrong with it."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{SETTING}: entries must be non-empty strings, got {text!r}")
    raw = text.strip()
    if "://" in raw or any(c in raw for c in "?#@ \t"):
        raise ValueError(
            f"{SETTING}: entry {text!r} must be HOST, HOST:PORT or HOST[:PORT]/PATH (no scheme, query, user or "
            "spaces), e.g. \"acct.blob.core.windows.net\" or \"127.0.0.1:10000/devstoreaccount1\""
        )
    authority, _, path = raw.partition("/")
    segments = tuple(s for s in path.split("/") if s)
    port: int | None = None
    if authority.startswith("["):
        host, sep, rest = authority[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{SETTING}: entry {text!r}: an IPv6 address goes in brackets, e.g. [2001:db8::1]:9000")
        port_text = rest[1:] if rest else None
    elif authority.count(":") == 1:
        host, port_text = authority.split(":")
    elif ":" in authority:
        raise ValueError(f"{SETTING}: entry {text!r}: write an IPv6 address in brackets, e.g. [2001:db8::1]")
    else:
        host, port_text = authority, None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{SETTING}: entry {text!r}: the port must be a number from 1 to 65535")
        port = int(port_text)
    if "*" in host and host.endswith("."):
        host = ""  # "*." or "*.example.": a wildcard needs a domain, and is written without the root dot
    host = normalize_host(host)
    if not host or ("*" in host and host != "*" and not (host.startswith("*.") and "*" not in host[2:] and host[2:])):
        raise ValueError(f"{SETTING}: entry {text!r}: a wildcard is `*` or `*.domain`, anything else is a host")
    return AllowEntry(text=raw, host=host, port=port, path=segments)


def parse_allow_list(values: object) -> tuple[AllowEntry, ...]:
    """Parse `[storage.external] allow` (a list of strings)."""
    if values is None:
        return ()
    if not isinstance(values, list | tuple):
        raise ValueError(f"{SETTING} must be a list of strings, got {type(values).__name__}")
    return tuple(parse_allow_entry(v) for v in values)


def _entries(allow: Iterable[str | AllowEntry]) -> list[AllowEntry]:
    return [a if isinstance(a, AllowEntry) else parse_allow_entry(a) for a in allow]


def find_allowed(
    allow: Iterable[str | AllowEntry], host: str, port: int, default_port: int | None, segments: Sequence[str]
) -> AllowEntry | None:
    """The entry that allows a URL (an exact one in preference to a wildcard), or None."""
    matching = [e for e in _entries(allow) if e.matches(host, port, default_port, segments)]
    matching.sort(key=lambda e: e.wildcard)
    return matching[0] if matching else None


def is_listed(allow: Iterable[str | AllowEntry], host: str, port: int, default_port: int | None = None) -> bool:
    """True when an exact (non-wildcard) entry names `host:port`: the host is exempt from the address policy."""
    return any(not e.wildcard and e.matches_host(host, port, default_port) for e in _entries(allow))


# ----------------------------------------------------------------------------------- address policy
def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, IPv4-compatible), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _IPV4_COMPATIBLE and int(address) > 1:  # ::a.b.c.d (deprecated); :: and ::1 are below
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_refusal(address: IPAddress) -> str | None:
    """Why an address is refused for a client-chosen destination ("loopback", ...), or None if public."""
    if isinstance(address, IPv6Address):
        if address.scope_id:
            address = IPv6Address(str(address).split("%", 1)[0])
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = address_refusal(embedded)
            if address in _IPV4_COMPATIBLE:
                return f"IPv4-compatible {reason or 'address'} (deprecated)"
            return f"{reason} (IPv4 {embedded} inside IPv6)" if reason else None
        if address in _NAT64_LOCAL:
            return "local-use NAT64"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if isinstance(address, IPv4Address):
        if address in _SHARED:
            return "shared (carrier-grade NAT)"
        for network, reason in _SPECIAL_V4:
            if address in network:
                return reason
    if isinstance(address, IPv6Address) and address.is_site_local:
        return "site-local"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "not globally routable"
    return None


def parse_ip(host: str) -> IPAddress | None:
    """The IP address a host string spells canonically, or None for a name."""
    try:
        return ipaddress.ip_address(normalize_host(host))
    except ValueError:
        return None


def system_resolve(host: str, port: int) -> list[str]:
    """The system resolver (getaddrinfo), TCP only; blocking (run it in a thread)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def check_destination(
    host: str,
    port: int,
    allow: Iterable[str | AllowEntry] = (),
    *,
    resolve: Resolve = system_resolve,
    default_port: int | None = None,
) -> list[IPAddress]:
    """Resolve `host` and return its addresses if the policy lets the server connect to them.

    An exact allow-list entry for `host:port` (`default_port` is the scheme's, for entries without one)
    exempts the host from the address rules; otherwise every address must be public. IP literals are
    not resolved. Raises `DestinationRefused` (policy) or `UnresolvableHost` (no address).
    """
    listed = is_listed(allow, host, port, default_port)
    literal = parse_ip(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        name = normalize_host(host)
        try:
            answers = list(resolve(name, port))
        except UnicodeError:
            raise UnresolvableHost(f"host {host!r} is not a valid host name") from None
        except OSError as exc:
            raise UnresolvableHost(f"host {host!r} does not resolve ({exc.strerror or exc})") from None
        addresses = []
        for answer in answers:
            try:
                address = ipaddress.ip_address(answer)
            except ValueError:
                raise DestinationRefused(f"host {host!r} resolved to {answer!r}, which is not an IP address") from None
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise UnresolvableHost(f"host {host!r} does not resolve to any address")
    if listed:
        return addresses
    for address in addresses:
        reason = address_refusal(address)
        if reason is not None:
            via = "" if literal is not None else f" resolves to {address}, which"
            raise DestinationRefused(
                f"host {host!r}{via} is a {reason} address; such addresses are refused for client-chosen "
                f"storage unless the operator lists the host (with its port) in `{SETTING}`"
            )
    return addresses


# ------------------------------------------------------------------------- at connection time (aiohttp)
def pinned_results(
    host: str, port: int, family: socket.AddressFamily, addresses: Iterable[IPAddress]
) -> list[ResolveResult]:
    """What an aiohttp resolver returns for addresses a policy checked: exactly those, of the family aiohttp
    asks for (so the connection goes where the check looked); `AddressRefused` when none is left."""
    results: list[ResolveResult] = []
    for address in addresses:
        af = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        if family not in (socket.AF_UNSPEC, af):
            continue
        results.append({"hostname": host, "host": str(address), "port": port, "family": af, "proto": 0, "flags": 0})
    if not results:
        raise AddressRefused(f"host {host!r} has no address of the requested family")
    return results


class PolicyResolver(AbstractResolver):
    """aiohttp resolver that applies `check_destination` to every connection and pins the checked addresses.

    aiohttp skips resolvers for IP literals; those are checked before each upload by the store resolver
    (`ExternalPolicy.plan`), and a literal cannot be rebound.
    """

    def __init__(
        self, allow: Sequence[AllowEntry], default_port: int | None, *, resolve: Resolve = system_resolve
    ) -> None:
        self.allow = tuple(allow)
        self.default_port = default_port
        self._resolve = resolve

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The checked addresses of `host` (family filtered as aiohttp asks); `AddressRefused` otherwise."""
        try:
            addresses = await asyncio.to_thread(
                check_destination, host, port, self.allow, resolve=self._resolve, default_port=self.default_port
            )
        except (DestinationRefused, UnresolvableHost) as exc:
            raise AddressRefused(str(exc)) from None
        return pinned_results(host, port, family, addresses)

    async def close(self) -> None:
        """Nothing to release (resolution runs in the default thread pool)."""
        return None


def find_refusal(exc: BaseException | None) -> AddressRefused | None:
    """The `AddressRefused` somewhere in an exception's causes (SDKs wrap connection errors), or None."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, AddressRefused):
            return current
        stack += [current.__cause__, current.__context__]
        for attr in ("inner_exception", "os_error", "exc"):
            inner = getattr(current, attr, None)
            if isinstance(inner, BaseException):
                stack.append(inner)
    return None
