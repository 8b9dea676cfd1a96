"""The address rule and data-URI loading: no network is touched by anything here."""

from __future__ import annotations

import base64
import io
import random

import pytest
from PIL import Image

from videoserve import errors
from videoserve.media import fetch

POLICY = fetch.FetchPolicy(max_bytes=64 * 1024, max_pixels=100_000, timeout=5, allow_private=False)


@pytest.mark.parametrize(
    ("ip", "public"),
    [
        # public unicast
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2606:4700:4700::1111", True),
        ("[2606:4700:4700::1111]", True),
        # loopback, unspecified
        ("127.0.0.1", False),
        ("127.255.255.254", False),
        ("::1", False),
        ("0.0.0.0", False),
        ("::", False),
        # private, CGNAT, link-local, metadata
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("172.31.255.255", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),
        ("100.127.255.254", False),
        ("169.254.169.254", False),
        ("169.254.1.1", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("fd00:ec2::254", False),
        ("fec0::1", False),
        # multicast, broadcast, reserved, documentation, benchmarking, IETF
        ("224.0.0.1", False),
        ("233.252.0.1", False),
        ("239.255.255.250", False),
        ("ff02::1", False),
        ("ff0e::1", False),
        ("255.255.255.255", False),
        ("240.0.0.1", False),
        ("192.0.2.1", False),
        ("198.51.100.7", False),
        ("203.0.113.9", False),
        ("198.18.0.1", False),
        ("192.0.0.8", False),
        ("2001:db8::1", False),
        # IPv6 forms that embed an IPv4 address follow that address
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.1.2.3", False),
        ("::ffff:169.254.169.254", False),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::7f00:1", False),
        ("64:ff9b::a9fe:a9fe", False),
        ("64:ff9b::808:808", True),
        ("2002:7f00:1::", False),
        ("2002:0a00:0001::1", False),
        ("2002:808:808::1", True),
        ("2001::1", False),  # Teredo
        # not addresses at all
        ("localhost", False),
        ("", False),
        ("999.1.1.1", False),
    ],
)
def test_is_public_address(ip: str, public: bool) -> None:
    assert fetch.is_public_address(ip) is public


def image_bytes(fmt: str, size: tuple[int, int] = (24, 16), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (200, 10, 10) if mode == "RGB" else None).save(buffer, format=fmt)
    return buffer.getvalue()


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


@pytest.mark.parametrize(
    ("fmt", "media_type", "mode"),
    [
        ("PNG", "image/png", "RGB"),
        ("PNG", "image/png", "RGBA"),
        ("JPEG", "image/jpeg", "RGB"),
        ("WEBP", "image/webp", "RGB"),
        ("GIF", "image/gif", "P"),
    ],
)
async def test_data_uri_images_load_as_rgb(fmt: str, media_type: str, mode: str) -> None:
    ref = await fetch.load_reference(data_uri(image_bytes(fmt, mode=mode), media_type), POLICY)
    assert (ref.width, ref.height) == (24, 16)
    assert ref.image.mode == "RGB"
    assert ref.image.size == (24, 16)
    with Image.open(io.BytesIO(ref.png)) as png:
        assert png.format == "PNG"
        assert png.size == (24, 16)


async def test_data_uri_tolerates_whitespace_urlsafe_alphabet_and_missing_padding() -> None:
    encoded = base64.urlsafe_b64encode(image_bytes("PNG")).decode().rstrip("=")
    wrapped = "\n".join(encoded[i : i + 60] for i in range(0, len(encoded), 60))
    ref = await fetch.load_reference(f"  DATA:Image/PNG;BASE64,{wrapped}  ", POLICY)
    assert (ref.width, ref.height) == (24, 16)


async def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (30, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    ref = await fetch.load_reference(data_uri(buffer.getvalue(), "image/jpeg"), POLICY)
    assert (ref.width, ref.height) == (10, 30)


async def expect_invalid(uri: str, match: str, policy: fetch.FetchPolicy = POLICY):
    with pytest.raises(errors.InvalidRequest, match=match) as caught:
        await fetch.load_reference(uri, policy)
    assert caught.value.param == "input_reference"
    return caught.value


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("data:image/png,notbase64", "malformed data URI"),
        ("data:text/plain;base64,aGVsbG8=", "malformed data URI"),
        ("data:;base64,aGVsbG8=", "malformed data URI"),
        ("data:image/png;base64", "malformed data URI"),
        ("data:image/png;base64,!!!not-base64!!!", "invalid base64"),
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", "not an image in a supported format"),
        ("data:image/png;base64,", "empty"),
    ],
)
async def test_bad_data_uris_are_refused(uri: str, match: str) -> None:
    await expect_invalid(uri, match)


async def test_truncated_image_is_refused() -> None:
    png = image_bytes("PNG", size=(64, 64))
    await expect_invalid(data_uri(png[: len(png) // 2]), "corrupt or truncated")


async def test_unsupported_image_format_is_refused() -> None:
    tiff = image_bytes("TIFF")
    await expect_invalid(data_uri(tiff, "image/tiff"), "not an image in a supported format")


async def test_oversized_data_uri_is_payload_too_large() -> None:
    policy = fetch.FetchPolicy(max_bytes=1000, max_pixels=10**8, timeout=5, allow_private=False)
    noise = Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    assert len(buffer.getvalue()) > 1000
    error = await expect_invalid(data_uri(buffer.getvalue()), "larger than the limit", policy)
    assert isinstance(error, errors.PayloadTooLarge)


async def test_too_many_pixels_is_refused_before_decoding() -> None:
    # A 4000x4000 PNG of one colour is a few kilobytes: small in bytes, huge in pixels.
    bomb = image_bytes("PNG", size=(4000, 4000))
    assert len(bomb) < POLICY.max_bytes
    error = await expect_invalid(data_uri(bomb), "4000x4000 = 16000000 pixels")
    assert not isinstance(error, errors.PayloadTooLarge)


async def test_pillow_bomb_guard_is_reported_as_too_many_pixels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow raises past twice this
    policy = fetch.FetchPolicy(max_bytes=10**6, max_pixels=10**8, timeout=5, allow_private=False)
    await expect_invalid(data_uri(image_bytes("PNG", size=(100, 100))), "too many pixels", policy)


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("ftp://example.invalid/x.png", "unsupported scheme 'ftp'"),
        ("file:///etc/passwd", "unsupported scheme 'file'"),
        ("javascript:alert(1)", "unsupported scheme 'javascript'"),
        ("gopher://127.0.0.1:70/", "unsupported scheme 'gopher'"),
        ("/etc/passwd", "is not a URL"),
        ("x.png", "is not a URL"),
        ("", "is empty"),
        ("   ", "is empty"),
        ("http:///x.png", "no host"),
    ],
)
async def test_unsupported_references_are_refused(uri: str, match: str) -> None:
    await expect_invalid(uri, match)
