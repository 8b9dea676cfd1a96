"""Signed, expiring URLs for outputs.

Output URLs are opened by browsers, `<video>` tags and SDKs that do not send the API key, so the
URL itself must carry the authorization. An HMAC over the key and the expiry does that without
any database lookup: only the server knows the secret, a changed key or expiry breaks the
signature, and the expiry matches the retention, so a link dies with its video.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from videoserve import clock
from videoserve.storage.base import BlobStore


class UrlSigner:
    """Signs and verifies `(key, expires_at)` pairs with HMAC-SHA256."""

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes | bytearray) or not secret:
            raise ValueError("the URL-signing secret must be non-empty bytes")
        self._secret = bytes(secret)

    def sign(self, key: str, expires_at: int) -> str:
        """The URL-safe base64 (unpadded) HMAC of `key` and `expires_at` (Unix seconds)."""
        message = f"{key}\n{int(expires_at)}".encode()
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def verify(self, key: str, expires_at: int, signature: str, *, now: float) -> bool:
        """True when `signature` is ours for `key` and `expires_at`, and `now` is before it."""
        if not isinstance(signature, str) or now >= expires_at:
            return False
        expected = self.sign(key, expires_at).encode("ascii")
        # Compare bytes: compare_digest rejects non-ASCII str, and a URL can carry anything.
        return hmac.compare_digest(expected, signature.encode("utf-8", "surrogatepass"))


async def file_url(
    blobs: BlobStore, signer: UrlSigner, base: str, key: str, expires_at: float
) -> str:
    """An absolute URL for a stored file that needs no API key and dies with the retention:
    the store's presigned URL, else our own signed `/files/` link. Every link the server
    hands out (answers and webhook events) is made here."""
    presigned = await blobs.presigned_get_url(key, max(1.0, expires_at - clock.now()))
    if presigned:
        return presigned
    expires = int(expires_at)
    return f"{base}/files/{key}?expires={expires}&signature={signer.sign(key, expires)}"
