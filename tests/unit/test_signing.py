"""Signed output URLs: only an untampered, unexpired signature from our secret verifies."""

from __future__ import annotations

import pytest

from videoserve.storage.signing import UrlSigner

SIGNER = UrlSigner(b"test-secret")
KEY = "videos/req_1/video.mp4"
EXPIRES = 1_900_000_000
NOW = EXPIRES - 60.0


def test_valid_signature_verifies() -> None:
    signature = SIGNER.sign(KEY, EXPIRES)
    assert SIGNER.verify(KEY, EXPIRES, signature, now=NOW)
    assert signature == SIGNER.sign(KEY, EXPIRES)  # deterministic
    assert "=" not in signature and "+" not in signature and "/" not in signature
    assert len(signature) == 43  # 32 bytes, unpadded URL-safe base64


@pytest.mark.parametrize(
    ("key", "expires_at"),
    [
        ("videos/req_2/video.mp4", EXPIRES),
        ("videos/req_1/thumb.jpg", EXPIRES),
        (KEY, EXPIRES + 3600),
        (KEY, EXPIRES - 1),
        (KEY + "\n", EXPIRES),
    ],
)
def test_tampered_key_or_expiry_fails(key: str, expires_at: int) -> None:
    assert not SIGNER.verify(key, expires_at, SIGNER.sign(KEY, EXPIRES), now=NOW - 3600)


def test_tampered_signature_fails() -> None:
    signature = SIGNER.sign(KEY, EXPIRES)
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    for bad in (flipped, signature[:-1], signature + "A", "", signature + "é", "\udcff"):
        assert not SIGNER.verify(KEY, EXPIRES, bad, now=NOW)


def test_expired_signature_fails() -> None:
    signature = SIGNER.sign(KEY, EXPIRES)
    assert SIGNER.verify(KEY, EXPIRES, signature, now=EXPIRES - 0.001)
    assert not SIGNER.verify(KEY, EXPIRES, signature, now=EXPIRES)
    assert not SIGNER.verify(KEY, EXPIRES, signature, now=EXPIRES + 1)


def test_other_secret_fails() -> None:
    signature = UrlSigner(b"other-secret").sign(KEY, EXPIRES)
    assert not SIGNER.verify(KEY, EXPIRES, signature, now=NOW)


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        UrlSigner(b"")
