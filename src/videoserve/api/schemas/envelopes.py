"""The two error envelopes: Segmind's flat `{"error", ...}` and OpenAI's nested one."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SegmindError(BaseModel):
    """Every error outside `/v1/videos`: the SDK reads `error`; the rest are structured fields."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="What went wrong, for people")
    code: str | None = Field(default=None, description="Machine-readable reason, where one exists")
    param: str | None = Field(default=None, description="The parameter at fault (400, 413)")
    request_id: str | None = Field(default=None, description="The request concerned (504)")
    balance: float | None = Field(default=None, description="Credits left (406)")
    price: float | None = Field(default=None, description="What the request costs (406)")


class OpenAIErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    message: str
    type: str = Field(description="invalid_request_error, permission_error, rate_limit_error...")
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """Every error under `/v1/videos`, as the official `openai` package reads it."""

    error: OpenAIErrorDetail


# Why each status is answered; the same words in both dialects.
REASONS: dict[int, str] = {
    400: "Invalid parameters or body (the message names the parameter)",
    401: "Missing or invalid API key",
    403: "The key lacks the permission (admin), or a signed link is invalid",
    404: "No such model, request or resource (also another key's, or an expired one)",
    406: "Insufficient credits",
    409: "Conflict with the resource's state",
    413: "Body or referenced image over the size limit",
    422: "The request FAILED (the body carries the status and the error)",
    429: "Rate limited (see Retry-After)",
    502: "The model is unavailable on this server",
    503: "The job database is unavailable, or the server is overloaded (see Retry-After)",
    504: "Timed out waiting for the video",
    507: "The server's storage is full: the request's files could not be stored",
}
