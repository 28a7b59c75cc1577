"""Who may use the owner's page, checked before any page runs: the one place these rules live.

- Peers: with the page on loopback (the default), only loopback peers; a phone on a named local interface
  only when the configuration names that interface (``owner_page.listen``).
- Host: only the names the page is served under (DNS rebinding: a web page elsewhere resolving its own name
  to 127.0.0.1 gets nothing).
- Cross-origin: a state-changing request whose ``Origin`` (or, without one, ``Referer``) is not the page
  itself, or that the browser marks ``Sec-Fetch-Site: cross-site``, is refused.
- Session: every page but pairing needs the paired session's cookie; every state-changing request carries
  the session's CSRF token (compared in constant time).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
COOKIE = "owner_session"


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str


def _loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def check_peer(remote_addr: str | None, loopback_only: bool) -> Refusal | None:
    if loopback_only and not _loopback(remote_addr):
        return Refusal(403, f"this page is served to the car's own screen only (request from {remote_addr}); "
                            "a phone needs owner_page.listen set to a local interface")
    return None


def check_host(host: str | None, allowed_hosts: Collection[str]) -> Refusal | None:
    if (host or "").lower() not in allowed_hosts:
        return Refusal(400, f"unknown host {host!r}: the page answers only as {', '.join(sorted(allowed_hosts))}")
    return None


def check_origin(method: str, origin: str | None, referer: str | None, fetch_site: str | None,
                 allowed_hosts: Collection[str]) -> Refusal | None:
    if method in SAFE_METHODS:
        return None
    if fetch_site == "cross-site":
        return Refusal(403, "cross-site request refused")
    source = origin if origin and origin != "null" else referer
    if origin == "null":
        return Refusal(403, "request from an opaque origin refused")
    if source is None:
        return None  # no browser-supplied origin at all: the CSRF token still decides
    netloc = urlsplit(source).netloc.lower()
    if netloc not in allowed_hosts:
        return Refusal(403, f"cross-origin request from {source} refused")
    return None


def check_csrf(method: str, sent: str | None, expected: str) -> Refusal | None:
    if method in SAFE_METHODS:
        return None
    if not sent or not hmac.compare_digest(sent, expected):
        return Refusal(403, "the form's security token is missing or wrong: reload the page and try again")
    return None


def allowed_hosts(listen: str, port: int) -> frozenset[str]:
    names = {f"[{listen}]" if ":" in listen else listen}  # an IPv6 address is bracketed in a Host header
    if _loopback(listen):
        names |= {"localhost", "127.0.0.1", "[::1]"}
    return frozenset(f"{name}:{port}" for name in names) | (frozenset(names) if port == 80 else frozenset())
