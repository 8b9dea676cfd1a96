"""Load `input_reference` images from URLs and data URIs without becoming an SSRF proxy.

A user-supplied URL makes this server open connections on the user's behalf, so every hop
(redirects included) must go to a public address: the host is resolved and checked before the
request, and `httpx-secure` checks the address actually connected to, which also defeats DNS
rebinding between the two. Host names are resolved by a `Resolver` with a deadline, off the
loop's shared thread pool (see `videoserve.resolver`). Bodies are read with a byte cap and
decoded with a pixel cap checked from the header, before any pixel is decoded (decompression
bombs). Every failure is an `errors.InvalidRequest` on `input_reference` whose message says
what was wrong.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import httpx
import httpx_secure
from PIL import Image, ImageOps, UnidentifiedImageError

from videoserve import errors
from videoserve.resolver import Resolver, Unresolvable

PARAM = "input_reference"

# Formats a browser or phone produces. Pillow opens many more (EPS runs Ghostscript, some
# others have a history of parser bugs), so the rest are refused before any parser sees them.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_DATA_URI = re.compile(r"^data:(?P<meta>[^,]*),(?P<payload>.*)$", re.DOTALL | re.IGNORECASE)
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

_CGNAT = ip_network("100.64.0.0/10")
_IETF_PROTOCOL = ip_network("192.0.0.0/24")
_NAT64_WELL_KNOWN = ip_network("64:ff9b::/96")
_METADATA = frozenset({ip_address("169.254.169.254"), ip_address("fd00:ec2::254")})

# (host, port) -> None, or raise InvalidRequest: the per-hop address check.
Admit = Callable[[str, int], Awaitable[None]]


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for loading one reference image; built from `Settings` by the caller."""

    max_bytes: int  # largest encoded image accepted, in bytes
    max_pixels: int  # largest width x height accepted, checked before decoding
    timeout: float  # seconds for the whole download, redirects included
    allow_private: bool  # let URLs reach loopback/private hosts (trusted networks only)
    max_redirects: int = 3  # redirects followed before giving up


@dataclass(frozen=True)
class ReferenceImage:
    """A verified, decoded reference image, ready for a pipeline or an upstream API."""

    image: Image.Image  # RGB, EXIF orientation applied
    png: bytes  # the same pixels re-encoded as PNG: no metadata, no exotic container
    width: int
    height: int


def is_public_address(ip: str) -> bool:
    """True when `ip` is a globally reachable unicast address that a URL may make us contact.

    False for loopback, private, link-local (cloud metadata included), unspecified, multicast,
    reserved, shared CGNAT space, documentation ranges, and for IPv6 forms that embed one of
    those (IPv4-mapped, NAT64 well-known prefix, 6to4). Not an IP address: False.
    """
    try:
        address = ip_address(ip.strip().strip("[]"))
    except ValueError:
        return False
    return _is_public(address)


def _is_public(address: IPv4Address | IPv6Address) -> bool:
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return _is_public(address.ipv4_mapped)
        if address in _NAT64_WELL_KNOWN:
            return _is_public(IPv4Address(address.packed[-4:]))
        if address.sixtofour is not None:
            return _is_public(address.sixtofour)
        if address.is_site_local:
            return False
    elif address in _CGNAT or address in _IETF_PROTOCOL:
        return False
    if address in _METADATA:
        return False
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
        or address.is_private
    )


async def load_reference(
    uri: str, policy: FetchPolicy, *, resolver: Resolver | None = None
) -> ReferenceImage:
    """Fetch or decode `uri` (http(s) URL or data:image/...;base64 URI) into a checked image.

    `resolver` resolves the URL's hosts for the address check; a server passes its own, shared
    by every request (without one, this call makes one of its own)."""
    text = uri.strip() if isinstance(uri, str) else ""
    if not text:
        raise errors.InvalidRequest(f"{PARAM} is empty", param=PARAM)
    match = _SCHEME.match(text)
    scheme = match.group(1).lower() if match else None
    if scheme == "data":
        return await asyncio.to_thread(_load_data_uri, text, policy)
    if scheme in ("http", "https"):
        async with _http_client(policy) as client:
            admit = None
            if not policy.allow_private:
                admit = public_only(resolver or Resolver(policy.timeout))
            data = await _download(text, policy, client=client, admit=admit)
        return await asyncio.to_thread(_decode_image, data, policy)
    problem = f"has unsupported scheme {scheme!r}" if scheme else "is not a URL"
    raise errors.InvalidRequest(
        f"{PARAM} {problem}; use an http(s) URL or a data:image/...;base64 URI", param=PARAM
    )


# --- data URIs ------------------------------------------------------------------------------


def _load_data_uri(uri: str, policy: FetchPolicy) -> ReferenceImage:
    return _decode_image(_decode_data_uri(uri, policy.max_bytes), policy)


def _decode_data_uri(uri: str, max_bytes: int) -> bytes:
    """The bytes of a `data:image/<type>;base64,<data>` URI, size-checked before decoding."""
    match = _DATA_URI.match(uri)
    meta = [part.strip().lower() for part in match.group("meta").split(";")] if match else []
    if not match or not meta[0].startswith("image/") or meta[-1] != "base64":
        raise errors.InvalidRequest(
            f"{PARAM} is a malformed data URI; expected data:image/<type>;base64,<data>",
            param=PARAM,
        )
    payload = match.group("payload")
    if "%" in payload:
        payload = urllib.parse.unquote(payload)
    payload = "".join(payload.split())
    padding = payload.count("=", max(0, len(payload) - 2))
    if len(payload) * 3 // 4 - padding > max_bytes:
        raise _too_large(max_bytes)
    # Browsers and some tools emit the URL-safe alphabet or drop the padding; both are harmless.
    payload = payload.replace("-", "+").replace("_", "/")
    payload += "=" * (-len(payload) % 4)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise errors.InvalidRequest(
            f"{PARAM} data URI has invalid base64 data", param=PARAM
        ) from exc
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    return data


# --- HTTP -----------------------------------------------------------------------------------


def _http_client(policy: FetchPolicy) -> httpx.AsyncClient:
    """A client that only connects to public addresses, unless the policy allows private ones.

    trust_env is off: a proxy from the environment would hide the real destination address
    from the check (and httpx-secure refuses proxies outright).
    """
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(policy.timeout),
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": "videoserve", "Accept": "image/*"},
    )
    if policy.allow_private:
        return client
    return httpx_secure.httpx_ssrf_protection(
        client, custom_validator=lambda _host, ip, _port: _is_public(ip)
    )


def public_only(resolver: Resolver) -> Admit:
    """The per-hop check: refuse a host unless every address it resolves to is public.

    Checked before connecting so a refused host gets no packet at all (httpx-secure alone may
    open a TCP probe to it); httpx-secure then re-checks the address actually used.
    """

    async def admit(host: str, port: int) -> None:
        try:
            addresses = [str(ip_address(host.strip("[]")))]
        except ValueError:
            try:
                addresses = await resolver.addresses(host, port)
            except Unresolvable as exc:
                raise errors.InvalidRequest(f"{PARAM} URL {exc}", param=PARAM) from exc
        for address in addresses:
            if not is_public_address(address):
                raise _refused(address, host)

    return admit


async def _download(
    url: str, policy: FetchPolicy, *, client: httpx.AsyncClient, admit: Admit | None
) -> bytes:
    """GET `url` with `client`, following up to `policy.max_redirects` redirects, checking
    every hop with `admit`, and return the body (at most `policy.max_bytes`)."""
    try:
        async with asyncio.timeout(policy.timeout):
            return await _follow(url, policy, client=client, admit=admit)
    except TimeoutError as exc:
        raise _timed_out(policy) from exc
    except httpx_secure.SSRFProtectionError as exc:
        raise _refused(str(exc.ip_addr) if exc.ip_addr else exc.hostname, exc.hostname) from exc
    except httpx.TimeoutException as exc:
        raise _timed_out(policy) from exc
    except httpx.ConnectError as exc:
        reason = "connection refused" if _is_refusal(exc) else str(exc) or "connection failed"
        raise errors.InvalidRequest(
            f"{PARAM} URL could not be reached: {reason}", param=PARAM
        ) from exc
    except httpx.HTTPError as exc:
        raise errors.InvalidRequest(
            f"{PARAM} URL could not be fetched: {type(exc).__name__}: {exc}", param=PARAM
        ) from exc


async def _follow(
    url: str, policy: FetchPolicy, *, client: httpx.AsyncClient, admit: Admit | None
) -> bytes:
    target = _http_url(url, what="URL")
    for hop in range(policy.max_redirects + 1):
        if admit is not None:
            await admit(target.host, target.port or (443 if target.scheme == "https" else 80))
        async with client.stream("GET", target) as response:
            location = response.headers.get("location")
            if response.status_code in _REDIRECT_STATUSES and location:
                if hop == policy.max_redirects:
                    break
                target = _http_url(str(response.url.join(location)), what="redirect target")
                continue
            if not response.is_success:
                raise errors.InvalidRequest(
                    f"{PARAM} URL answered HTTP {response.status_code}", param=PARAM
                )
            return await _read_capped(response, policy.max_bytes)
    raise errors.InvalidRequest(
        f"{PARAM} URL redirected more than {policy.max_redirects} times", param=PARAM
    )


def _http_url(url: str, *, what: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise errors.InvalidRequest(f"{PARAM} {what} is malformed: {exc}", param=PARAM) from exc
    if parsed.scheme not in ("http", "https"):
        raise errors.InvalidRequest(
            f"{PARAM} {what} has unsupported scheme {parsed.scheme!r}; only http(s) is fetched",
            param=PARAM,
        )
    if not parsed.host:
        raise errors.InvalidRequest(f"{PARAM} {what} has no host", param=PARAM)
    return parsed.copy_with(fragment=None)


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """Read the body, stopping as soon as it passes `max_bytes`, whatever Content-Length says."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
    return bytes(body)


def _is_refusal(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ConnectionRefusedError) or "refused" in str(current).lower():
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


# --- decoding -------------------------------------------------------------------------------


def _decode_image(data: bytes, policy: FetchPolicy) -> ReferenceImage:
    """Verify `data` is one of IMAGE_FORMATS within the pixel cap, and decode it to RGB.

    The cap is checked from the header before any decoding. Pillow's own bomb guard
    (`Image.MAX_IMAGE_PIXELS`, a process-wide setting) stays on as a backstop and is reported
    the same way; it is not lowered to the policy here because other code shares it.
    """
    if not data:
        raise errors.InvalidRequest(f"{PARAM} is empty: no image bytes", param=PARAM)
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as header:
            _check_pixels(header.size, policy.max_pixels)
            header.verify()
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            _check_pixels(image.size, policy.max_pixels)
            image.load()
            rgb = (ImageOps.exif_transpose(image) or image).convert("RGB")
    except Image.DecompressionBombError as exc:
        raise errors.InvalidRequest(
            f"{PARAM} image has too many pixels (limit {policy.max_pixels})", param=PARAM
        ) from exc
    except UnidentifiedImageError as exc:
        raise errors.InvalidRequest(
            f"{PARAM} is not an image in a supported format ({', '.join(IMAGE_FORMATS)})",
            param=PARAM,
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise errors.InvalidRequest(
            f"{PARAM} image is corrupt or truncated: {exc}", param=PARAM
        ) from exc
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return ReferenceImage(image=rgb, png=buffer.getvalue(), width=rgb.width, height=rgb.height)


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise errors.InvalidRequest(f"{PARAM} image has no pixels ({width}x{height})", param=PARAM)
    if width * height > max_pixels:
        raise errors.InvalidRequest(
            f"{PARAM} image is {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels} pixels",
            param=PARAM,
        )


# --- messages -------------------------------------------------------------------------------


def _too_large(max_bytes: int) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(
        f"{PARAM} image is larger than the limit of {max_bytes} bytes", param=PARAM
    )


def _timed_out(policy: FetchPolicy) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"{PARAM} URL timed out after {policy.timeout:g}s", param=PARAM)


def _refused(address: str, host: str) -> errors.InvalidRequest:
    via = "" if host.strip("[]") == address else f" ({host} resolves to it)"
    return errors.InvalidRequest(
        f"{PARAM} URL refused: {address} is not a public address{via}", param=PARAM
    )
