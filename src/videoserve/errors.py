"""The exceptions videoserve raises on purpose, one hierarchy users can catch at any level.

The core raises these; `videoserve.api.errors` alone maps them to HTTP status codes, and the
client raises the same classes from the answers it reads.
"""

from __future__ import annotations

from typing import Any, ClassVar


class VideoserveError(Exception):
    """Base of every error videoserve raises on purpose.

    `code` is the machine-readable name both HTTP dialects send beside the message (Segmind's
    `"code"`, OpenAI's `error.code`); `fields()` are the structured facts a client reads
    instead of parsing the message."""

    code: ClassVar[str] = "error"

    def fields(self) -> dict[str, Any]:
        """Structured facts of this error, rendered into the error body beside `code`."""
        return {}

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(VideoserveError):
    """The request's parameters or body break the model's schema or a documented rule."""

    code: ClassVar[str] = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def fields(self) -> dict[str, Any]:
        return {"param": self.param} if self.param else {}


class PayloadTooLarge(InvalidRequest):
    """The body, or an image it refers to, is over the configured size cap."""

    code: ClassVar[str] = "payload_too_large"


class Unauthorized(VideoserveError):
    """No API key, or one that is unknown or revoked."""

    code: ClassVar[str] = "invalid_api_key"


class Forbidden(VideoserveError):
    """The key is valid but lacks the permission for this call."""

    code: ClassVar[str] = "forbidden"


class NotFound(VideoserveError):
    """No such model, endpoint or request; also for another key's or an expired request."""

    code: ClassVar[str] = "not_found"


class InsufficientCredits(VideoserveError):
    """The key's balance does not cover the price of the request.

    `balance` is None when the key has no account row; `price` is what the request costs."""

    code: ClassVar[str] = "insufficient_credits"

    def __init__(
        self, message: str, *, balance: float | None = None, price: float | None = None
    ) -> None:
        super().__init__(message)
        self.balance = balance
        self.price = price

    def fields(self) -> dict[str, Any]:
        return {"balance": self.balance, "price": self.price}


class RateLimited(VideoserveError):
    """Too many requests; `retry_after` seconds until the next one may pass."""

    code: ClassVar[str] = "rate_limited"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def fields(self) -> dict[str, Any]:
        return {"retry_after": self.retry_after}


class ModelUnavailable(VideoserveError):
    """The model is configured but cannot run here (no weights, no upstream key...)."""

    code: ClassVar[str] = "model_unavailable"


class ServiceUnavailable(VideoserveError):
    """A dependency (the database) is unreachable for now; retrying later will work."""

    code: ClassVar[str] = "service_unavailable"

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def fields(self) -> dict[str, Any]:
        return {"retry_after": self.retry_after}


class StorageFull(VideoserveError):
    """The disk that must hold a request's files, its row or a result has no space left.

    Raised in place of the `OSError` (ENOSPC, EDQUOT) so that its message, which an API caller
    reads, never names a server path; the operator finds the path in the log."""

    code: ClassVar[str] = "storage_full"
    MESSAGE: ClassVar[str] = (
        "storage full: the server has no space left to store this request; "
        "retry once the operator has freed space"
    )

    def __init__(self, message: str = MESSAGE) -> None:
        super().__init__(message)


class RequestTimeout(VideoserveError):
    """A blocking call ran past its deadline; the job itself may still finish."""

    code: ClassVar[str] = "timeout"

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id

    def fields(self) -> dict[str, Any]:
        return {"request_id": self.request_id} if self.request_id else {}


class InferenceFailed(VideoserveError):
    """The request reached FAILED; `detail` is the server's reason, `failure` its code
    (`cancelled`, `moderation`, `model_error`...; None from a server without codes)."""

    code: ClassVar[str] = "inference_failed"

    def __init__(self, detail: str | None, *, request_id: str | None = None, body=None) -> None:
        super().__init__(detail or "inference failed")
        self.detail = detail
        self.request_id = request_id
        self.status_body = body or {}
        failure = self.status_body.get("code")
        self.failure: str | None = failure if isinstance(failure, str) else None


class InferenceTimeout(VideoserveError):
    """`wait()` ran past its deadline; the job may still be running under `request_id`."""

    def __init__(self, request_id: str, elapsed_s: float) -> None:
        super().__init__(f"request {request_id!r} did not complete within {elapsed_s:.1f}s")
        self.request_id = request_id
        self.elapsed_s = elapsed_s


class APIError(VideoserveError):
    """The server answered an error the client has no finer class for."""

    def __init__(self, message: str, *, status_code: int, body=None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body
