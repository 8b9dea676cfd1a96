"""The exceptions videoserve raises on purpose, one hierarchy users can catch at any level.

The core raises these; `videoserve.api.errors` alone maps them to HTTP status codes, and the
client raises the same classes from the answers it reads.
"""

from __future__ import annotations


class VideoserveError(Exception):
    """Base of every error videoserve raises on purpose."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(VideoserveError):
    """The request's parameters or body break the model's schema or a documented rule."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class PayloadTooLarge(InvalidRequest):
    """The body, or an image it refers to, is over the configured size cap."""


class Unauthorized(VideoserveError):
    """No API key, or one that is unknown or revoked."""


class Forbidden(VideoserveError):
    """The key is valid but lacks the permission for this call."""


class NotFound(VideoserveError):
    """No such model, endpoint or request; also for another key's or an expired request."""


class InsufficientCredits(VideoserveError):
    """The key's balance does not cover the price of the request."""


class RateLimited(VideoserveError):
    """Too many requests; `retry_after` seconds until the next one may pass."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelUnavailable(VideoserveError):
    """The model is configured but cannot run here (no weights, no upstream key...)."""


class ServiceUnavailable(VideoserveError):
    """A dependency (the database) is unreachable for now; retrying later will work."""

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeout(VideoserveError):
    """A blocking call ran past its deadline; the job itself may still finish."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class InferenceFailed(VideoserveError):
    """The request reached FAILED; `detail` is the server's reason."""

    def __init__(self, detail: str | None, *, request_id: str | None = None, body=None) -> None:
        super().__init__(detail or "inference failed")
        self.detail = detail
        self.request_id = request_id
        self.status_body = body or {}


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
