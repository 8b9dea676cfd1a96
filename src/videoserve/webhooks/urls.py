"""Webhook URLs: checked when registered, and again on every attempt.

A webhook makes this server POST to an address a user chose, which is the same SSRF path as
fetching `input_reference`, so the same rules apply (`videoserve.media.fetch`): only public
addresses unless `allow_private_urls`, checked before connecting (a refused host gets no
packet) and again by `httpx-secure` on the address actually connected to (DNS rebinding).
Redirects are not followed: a 3xx is a failed attempt. Host names are resolved by the
caller's `Resolver` (a deadline, no shared thread pool: see `videoserve.resolver`).
"""

from __future__ import annotations

import ipaddress

import httpx
import httpx_secure

from videoserve import errors
from videoserve.media.fetch import is_public_address
from videoserve.resolver import Resolver, Unresolvable

PARAM = "webhook"
MAX_URL_CHARS = 2048


class Refused(Exception):
    """The URL's host is not a public address (or cannot be resolved)."""


def parse_url(url: str) -> httpx.URL:
    """The URL, if it is an absolute http(s) URL with a host; else ValueError saying why."""
    text = url.strip() if isinstance(url, str) else ""
    if not text:
        raise ValueError("is empty")
    if len(text) > MAX_URL_CHARS:
        raise ValueError(f"is longer than {MAX_URL_CHARS} characters")
    try:
        parsed = httpx.URL(text)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise ValueError(f"is malformed: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        shown = f"scheme {parsed.scheme!r}" if parsed.scheme else "no scheme"
        raise ValueError(f"has {shown}; use an http:// or https:// URL")
    if not parsed.host:
        raise ValueError("has no host")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ValueError(f"has port {parsed.port}, outside 1-65535")
    return parsed


async def check_public_host(host: str, port: int, resolver: Resolver) -> None:
    """Raise `Refused` unless every address `host` resolves to is public."""
    bare = host.strip("[]")
    if _is_ip(bare):
        addresses = [bare]
    else:
        try:
            addresses = await resolver.addresses(bare, port)
        except Unresolvable as exc:
            raise Refused(str(exc)) from exc
    for address in addresses:
        if not is_public_address(address):
            via = "" if bare == address else f" ({host} resolves to it)"
            raise Refused(f"{address} is not a public address{via}")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


async def validate_webhook_url(
    url: str | None, *, allow_private: bool, resolver: Resolver, param: str = PARAM
) -> str | None:
    """The webhook URL to store, or None when none was given.

    `errors.InvalidRequest` (a 400) for a URL that is not http(s), or whose host is not a
    public address (or does not resolve within the resolver's timeout) while private URLs are
    not allowed. Call it before the job is submitted.
    """
    if url is None:
        return None
    try:
        parsed = parse_url(url)
    except ValueError as exc:
        raise errors.InvalidRequest(f"webhook URL {exc}", param=param) from None
    if not allow_private:
        try:
            await check_public_host(parsed.host, _port(parsed), resolver)
        except Refused as exc:
            raise errors.InvalidRequest(f"webhook URL refused: {exc}", param=param) from None
    return str(parsed)


class WebhookUrls:
    """A caller's webhook URLs checked under this server's rule (private addresses allowed or
    not), through the dispatcher's resolver: what the submit and endpoint routes need."""

    def __init__(self, *, allow_private: bool, resolver: Resolver) -> None:
        self._allow_private = allow_private
        self._resolver = resolver

    async def check(self, url: str | None, *, param: str = PARAM) -> str | None:
        """`validate_webhook_url` under this server's rule."""
        return await validate_webhook_url(
            url, allow_private=self._allow_private, resolver=self._resolver, param=param
        )


def delivery_client(*, timeout: float, allow_private: bool) -> httpx.AsyncClient:
    """The client every attempt goes through: no redirects, no proxies from the environment
    (a proxy would hide the real destination from the address check), SSRF-checked."""
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False
    )
    if allow_private:
        return client
    return httpx_secure.httpx_ssrf_protection(
        client, custom_validator=lambda _host, ip, _port: is_public_address(str(ip))
    )


async def admit(url: str, *, allow_private: bool, resolver: Resolver) -> httpx.URL:
    """The parsed URL of one attempt; `Refused` when it may not be contacted now."""
    try:
        parsed = parse_url(url)
    except ValueError as exc:
        raise Refused(f"URL {exc}") from None
    if not allow_private:
        await check_public_host(parsed.host, _port(parsed), resolver)
    return parsed
