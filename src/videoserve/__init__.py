"""videoserve: a self-hostable serverless API for video generation.

The public surface is what this module exports; everything else is internal.
"""

from videoserve._version import __version__
from videoserve.client import AsyncClient, AsyncJob, Client, Job
from videoserve.errors import (
    APIError,
    Forbidden,
    InferenceFailed,
    InferenceTimeout,
    InsufficientCredits,
    InvalidRequest,
    ModelUnavailable,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    ServiceUnavailable,
    Unauthorized,
    VideoserveError,
)

__all__ = [
    "APIError",
    "AsyncClient",
    "AsyncJob",
    "Client",
    "Forbidden",
    "InferenceFailed",
    "InferenceTimeout",
    "InsufficientCredits",
    "InvalidRequest",
    "Job",
    "ModelUnavailable",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
    "ServiceUnavailable",
    "Unauthorized",
    "VideoserveError",
    "__version__",
]
