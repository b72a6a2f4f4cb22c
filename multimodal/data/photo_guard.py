"""What a photo fetch may refuse, without any network library: the failure type and the allow-list rules.

With an allow-list (the service fetching URLs named in requests), a URL is fetched only from a listed host, and
never from a loopback, link-local, private or otherwise non-public address: IP literals are checked here, host
names on the addresses they resolve to, at connection time.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit


class FetchFailure(Exception):
    """One failed attempt: a one-line reason, and whether another attempt may succeed."""

    def __init__(self, reason: str, transient: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


def one_line(err: BaseException) -> str:
    """An exception's message on one line (aiohttp's and the resolver's may span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def check_ip(address: str, host: str) -> None:
    """Refuse a non-public address (loopback, link-local, private, reserved): an allow-list is no SSRF hole.

    Raises:
        FetchFailure: the address is not a public unicast address.
    """
    ip = ipaddress.ip_address(address.split("%")[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    if ip.is_global and not ip.is_multicast:
        return
    kinds = ("loopback", "link_local", "private", "multicast", "unspecified", "reserved")
    kind = next((k for k in kinds if getattr(ip, f"is_{k}")), "non-public").replace("_", "-")
    raise FetchFailure(f"host '{host}' is {address}, a {kind} address (refused when allow_hosts is set)", False)


def check_url(url: str, allow_hosts: tuple[str, ...] | None) -> None:
    """With an allow-list, refuse a URL whose host is not on it, or whose host is a non-public IP literal.

    Host names are checked again at connection time by :class:`PublicResolver`, on the addresses actually used.

    Raises:
        FetchFailure: the host is not allowed.
    """
    if allow_hosts is None:
        return
    host = (urlsplit(url).hostname or "").lower()
    if host not in {h.strip("[]").lower() for h in allow_hosts}:  # "[::1]" as written in a URL
        raise FetchFailure(f"host '{host}' is not allowed (allow_hosts: {', '.join(allow_hosts)})", False)
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return  # a name: resolved and checked by the resolver
    check_ip(host, host)


def missing_backend(scheme: str) -> str:
    """Why a URL of ``scheme`` cannot be read: an unknown scheme, or the fsspec backend to install."""
    from fsspec.registry import known_implementations

    known = known_implementations.get(scheme)
    if known is None:
        return f"unknown URL scheme '{scheme}://'"
    return f"install {known['class'].split('.')[0]} to read {scheme}:// photos"


def read_bounded(read: Any, max_bytes: int) -> bytes:
    """Everything ``read(n)`` gives, refused past ``max_bytes`` (at most one chunk past it is ever held)."""
    chunks: list[bytes] = []
    total = 0
    while chunk := read(min(2**20, max_bytes + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise FetchFailure(f"body over max_bytes={max_bytes}", False)
    return b"".join(chunks)
