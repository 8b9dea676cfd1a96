"""What the sync and async clients share: defaults, URLs, error mapping, retry and poll rules.

Nothing here performs I/O, so `_sync` and `_async` differ only in how they send a request and
how they sleep; every decision (which answer is an error, what to retry, how long to wait)
is made here once and stays the same in both.
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx

from videoserve import errors
from videoserve._version import __version__

API_KEY_ENV = "VIDEOSERVE_API_KEY"
BASE_URL_ENV = "VIDEOSERVE_BASE_URL"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0
USER_AGENT = f"videoserve-python/{__version__}"

# The server answers POST /v1/{model} within `sync_timeout_seconds` (600 s by default) or 504,
# so the blocking call must read longer than that or it would give up on a job about to finish.
SYNC_READ_TIMEOUT = 660.0

# Submits are retried with the same Idempotency-Key, so a retry can never create a second job.
SUBMIT_ATTEMPTS = 4
SUBMIT_BACKOFF = 0.5  # first pause; doubles on each retry
MAX_BACKOFF = 30.0

FIRST_POLL = 0.1  # seconds before the second status read of a `wait()`

# The server writes to a status stream at least every 15 s (a keep-alive comment), so a read
# that waits much longer than that has lost the stream; `wait()` then falls back to polling.
STREAM_READ_TIMEOUT = 45.0

# Answers worth another try: the request never reached the server, or the server (or a proxy in
# front of it) said "not now". Everything else is the caller's mistake or a final answer.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TransportError,
    errors.RateLimited,
    errors.ModelUnavailable,
    errors.ServiceUnavailable,
)
SUBMIT_RETRY_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TransportError,
    errors.ModelUnavailable,
    errors.ServiceUnavailable,
)


# --- configuration ------------------------------------------------------------------------------


def resolve_api_key(api_key: str | None) -> str | None:
    """The explicit key, else `VIDEOSERVE_API_KEY`; None is allowed (a loopback server may run
    without auth)."""
    return api_key if api_key is not None else (os.environ.get(API_KEY_ENV) or None)


def normalise_base_url(base_url: str | None) -> str:
    """The server root, without a trailing slash or `/v1`, `/v2`.

    The segmind and openai SDKs are configured with `.../v1`; accepting the same string here
    lets one setting serve all three clients.
    """
    url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).strip().rstrip("/")
    if not urlsplit(url).scheme:
        raise ValueError(f"base_url must be an absolute http(s) URL (got {url!r})")
    for suffix in ("/v1", "/v2"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url


def build_timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)


# Seconds a submitted request may wait for a worker before it fails with code `expired`.
START_TIMEOUT_HEADER = "X-Start-Timeout"
PRIORITY_HEADER = "X-Queue-Priority"
# Seconds it may run once started (at most the model's limit) before it fails `timeout`.
EXECUTION_TIMEOUT_HEADER = "X-Execution-Timeout"


def api_headers(
    api_key: str | None,
    idempotency_key: str | None = None,
    start_timeout: float | None = None,
    priority: str | None = None,
    execution_timeout: float | None = None,
) -> dict[str, str]:
    """Headers for calls to the API; output downloads get none, so the key never reaches the
    storage host a signed URL may point at. `start_timeout`: a submit's X-Start-Timeout;
    `priority`: its X-Queue-Priority; `execution_timeout`: its X-Execution-Timeout."""
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if api_key:
        headers["x-api-key"] = api_key
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    if start_timeout is not None:
        headers[START_TIMEOUT_HEADER] = repr(float(start_timeout))
    if priority is not None:
        headers[PRIORITY_HEADER] = priority
    if execution_timeout is not None:
        headers[EXECUTION_TIMEOUT_HEADER] = repr(float(execution_timeout))
    return headers


def stream_headers(api_key: str | None) -> dict[str, str]:
    return api_headers(api_key) | {"Accept": "text/event-stream", "Cache-Control": "no-cache"}


def new_idempotency_key() -> str:
    return f"vs-{uuid.uuid4().hex}"


# --- URLs -------------------------------------------------------------------------------------


def _segment(value: str) -> str:
    return quote(value, safe="")


def submit_url(base: str, model: str) -> str:
    return f"{base}/v2/{_segment(model)}"


def run_sync_url(base: str, model: str) -> str:
    return f"{base}/v1/{_segment(model)}"


def models_url(base: str) -> str:
    return f"{base}/v1/models"


def status_url(base: str, request_id: str) -> str:
    return f"{base}/v2/requests/{_segment(request_id)}/status"


def response_url(base: str, request_id: str) -> str:
    return f"{base}/v2/requests/{_segment(request_id)}"


def request_action_url(status_url: str, base: str, request_id: str, action: str) -> str:
    """`/v2/requests/{id}/{action}` (`events`, `cancel`) beside the job's status URL, which
    carries the host the server told us to use."""
    if status_url.endswith("/status"):
        return status_url[: -len("status")] + action
    return f"{base}/v2/requests/{_segment(request_id)}/{action}"


def absolute(base: str, url: str) -> str:
    """`url` as given when absolute; resolved against the server root otherwise."""
    return urljoin(base + "/", url)


def sync_timeout(timeout: httpx.Timeout) -> httpx.Timeout:
    """The client's timeout with a read long enough for the server's own blocking deadline."""
    read = None if timeout.read is None else max(timeout.read, SYNC_READ_TIMEOUT)
    return httpx.Timeout(connect=timeout.connect, read=read, write=timeout.write, pool=timeout.pool)


def capped_timeout(timeout: httpx.Timeout, remaining: float) -> httpx.Timeout:
    """The client's timeout, shortened so one slow poll cannot outlive `wait()`'s deadline."""
    cap = max(remaining, 0.5)

    def shorter(value: float | None) -> float:
        return cap if value is None else min(value, cap)

    return httpx.Timeout(
        connect=shorter(timeout.connect),
        read=shorter(timeout.read),
        write=shorter(timeout.write),
        pool=shorter(timeout.pool),
    )


def stream_timeout(timeout: httpx.Timeout, remaining: float) -> httpx.Timeout:
    """For a status stream: reads outlast the server's keep-alive, but not `wait()`'s deadline."""
    opened = httpx.Timeout(
        connect=timeout.connect, read=STREAM_READ_TIMEOUT, write=timeout.write, pool=timeout.pool
    )
    return capped_timeout(opened, remaining)


def download_target(path: str | os.PathLike[str], request_id: str, url: str) -> Path:
    """Where a download lands: `path`, or `<request_id><suffix>` inside it when it is a folder."""
    target = Path(path).expanduser()
    if target.is_dir():
        suffix = Path(urlsplit(url).path).suffix or ".mp4"
        target = target / f"{request_id}{suffix}"
    return target


def temp_path(target: Path) -> Path:
    """A sibling of `target`, so the final rename stays on one filesystem and is atomic."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")


def output_url(result: Mapping[str, Any], variant: str, base: str) -> str:
    """The result's URL for `variant` (`video` or `thumbnail`)."""
    field = {"video": "output", "thumbnail": "thumbnail"}.get(variant)
    if field is None:
        raise ValueError(f"variant must be 'video' or 'thumbnail' (got {variant!r})")
    url = result.get(field)
    if not isinstance(url, str) or not url:
        status = result.get("status")
        raise errors.APIError(
            f"request {result.get('request_id')!r} has no {field} URL (status {status})",
            status_code=200,
            body=dict(result),
        )
    return absolute(base, url)


# --- answers ------------------------------------------------------------------------------------


def parse_retry_after(value: str | None, default: float) -> float:
    """Seconds from a `Retry-After` header: a number, or an HTTP date."""
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return default
    return max(0.0, seconds)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def error_for(response: httpx.Response) -> errors.VideoserveError:
    """The `videoserve.errors` class for an error answer, with `status_code` set on it.

    The body must have been read (`read()` / `aread()`) for streamed responses.
    """
    code = response.status_code
    body = _json_or_none(response)
    fields: dict[str, Any] = body if isinstance(body, dict) else {}
    message = fields.get("error")
    if isinstance(message, dict):  # OpenAI's envelope, under /v1/videos
        fields = {**message, **{k: v for k, v in fields.items() if k != "error"}}
        message = message.get("message")
    if not isinstance(message, str) or not message:
        text = response.text.strip()
        message = f"HTTP {code} {response.reason_phrase}" + (f": {text[:300]}" if text else "")
    retry_after = response.headers.get("retry-after")

    exc: errors.VideoserveError
    if code == 400:
        exc = errors.InvalidRequest(message, param=fields.get("param"))
    elif code == 401:
        exc = errors.Unauthorized(message)
    elif code == 403:
        exc = errors.Forbidden(message)
    elif code == 404:
        exc = errors.NotFound(message)
    elif code == 406:
        exc = errors.InsufficientCredits(
            message, balance=fields.get("balance"), price=fields.get("price")
        )
    elif code == 413:
        exc = errors.PayloadTooLarge(message, param=fields.get("param"))
    elif code == 422:
        exc = errors.InferenceFailed(message, request_id=fields.get("request_id"), body=fields)
    elif code == 429:
        exc = errors.RateLimited(message, retry_after=parse_retry_after(retry_after, 1.0))
    elif code == 502:
        exc = errors.ModelUnavailable(message)
    elif code == 503:
        exc = errors.ServiceUnavailable(message, retry_after=parse_retry_after(retry_after, 5.0))
    elif code == 504:
        exc = errors.RequestTimeout(message, request_id=fields.get("request_id"))
    else:
        exc = errors.APIError(message, status_code=code, body=body)
    # The client adds what it read to the core's classes, which carry no HTTP fields of their
    # own (the server raises them too): attributes set here, so mypy cannot see them declared.
    exc.status_code = code  # type: ignore[union-attr]
    if not isinstance(exc, errors.APIError):
        exc.body = body  # type: ignore[union-attr]
    return exc


def json_or_raise(response: httpx.Response) -> Any:
    """The JSON body of a 2xx answer, or the mapped error."""
    if not response.is_success:
        raise error_for(response)
    body = _json_or_none(response)
    if body is None:
        raise errors.APIError(
            f"expected a JSON answer from {response.request.url} (got {response.text[:200]!r})",
            status_code=response.status_code,
            body=response.text,
        )
    return body


def status_body(response: httpx.Response) -> dict[str, Any]:
    """A status body; a FAILED request comes as HTTP 422 and is still a status, not an error."""
    if response.status_code == 422:
        body = _json_or_none(response)
        if isinstance(body, dict) and body.get("status") == "FAILED":
            return body
    body = json_or_raise(response)
    if not isinstance(body, dict):
        raise errors.APIError("status answer is not a JSON object", status_code=200, body=body)
    return body


def submitted(response: httpx.Response, base: str) -> tuple[str, str, str]:
    """`(request_id, status_url, response_url)` from a submit answer."""
    body = json_or_raise(response)
    request_id = body.get("request_id") if isinstance(body, dict) else None
    if not isinstance(request_id, str) or not request_id:
        raise errors.APIError(
            "submit answer has no request_id", status_code=response.status_code, body=body
        )
    return (
        request_id,
        absolute(base, body.get("status_url") or status_url(base, request_id)),
        absolute(base, body.get("response_url") or response_url(base, request_id)),
    )


def video_bytes(response: httpx.Response) -> bytes:
    """The MP4 of a blocking run, or the mapped error."""
    if not response.is_success:
        raise error_for(response)
    if response.headers.get("content-type", "").startswith("application/json"):
        raise errors.APIError(
            f"expected video bytes, got JSON: {response.text[:300]}",
            status_code=response.status_code,
            body=_json_or_none(response),
        )
    return response.content


def models_list(response: httpx.Response) -> list[dict[str, Any]]:
    body = json_or_raise(response)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise errors.APIError("models answer has no data list", status_code=200, body=body)
    return data


def cancel_body(response: httpx.Response) -> dict[str, Any]:
    body = json_or_raise(response)
    if not isinstance(body, dict):
        raise errors.APIError("cancel answer is not a JSON object", status_code=200, body=body)
    return body


def failed(body: Mapping[str, Any], request_id: str) -> errors.InferenceFailed:
    exc = errors.InferenceFailed(
        body.get("error"), request_id=body.get("request_id") or request_id, body=dict(body)
    )
    exc.status_code = 422  # type: ignore[attr-defined]
    return exc


# --- retry and poll rules -------------------------------------------------------------------


class SubmitRetry:
    """Counts submit attempts and says how long to pause before the next one."""

    def __init__(self, attempts: int = SUBMIT_ATTEMPTS, backoff: float = SUBMIT_BACKOFF) -> None:
        self.attempts = attempts
        self.backoff = backoff
        self.attempt = 0

    def pause_after(self, exc: BaseException, *, blocking: bool = False) -> float:
        """The pause before retrying after `exc`; re-raises `exc` when it must not be retried."""
        self.attempt += 1
        retryable = isinstance(exc, SUBMIT_RETRY_ERRORS)
        # A blocking run that timed out reading has waited the server's whole deadline already;
        # sending it again would only double the wait.
        if blocking and isinstance(exc, httpx.ReadTimeout):
            retryable = False
        if not retryable or self.attempt >= self.attempts:
            raise exc
        pause = min(self.backoff * 2 ** (self.attempt - 1), MAX_BACKOFF)
        return max(pause, min(getattr(exc, "retry_after", 0.0) or 0.0, MAX_BACKOFF))


class Poll:
    """The deadline and pacing of one `wait()`; raises the outcome when there is one."""

    def __init__(self, request_id: str, timeout: float, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive (got {interval!r})")
        self.request_id = request_id
        self.interval = interval
        self.started = time.monotonic()
        self.deadline = self.started + max(0.0, timeout)
        self.failures = 0
        self.polls = 0

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def finished(self, body: Mapping[str, Any]) -> bool:
        """True once COMPLETED; raises `InferenceFailed` for FAILED."""
        status = body.get("status")
        if status == "FAILED":
            raise failed(body, self.request_id)
        self.failures = 0
        return status == "COMPLETED"

    def check_deadline(self) -> None:
        """Raise `InferenceTimeout` once the deadline has passed."""
        if self.remaining() <= 0:
            raise errors.InferenceTimeout(self.request_id, time.monotonic() - self.started)

    def pause(self, exc: BaseException | None = None) -> float:
        """The pause before the next poll, never past the deadline.

        Raises `InferenceTimeout` once the deadline has passed. After a transient error the
        pause is the server's `Retry-After` when it sent one, else the interval doubling with
        each consecutive failure, so a struggling server is not hammered.
        """
        if exc is not None:
            self.failures += 1
            retry_after = getattr(exc, "retry_after", None)
            if retry_after:
                wanted = float(retry_after)
            else:
                ceiling = max(self.interval, 10.0)
                wanted = min(self.interval * 2 ** (self.failures - 1), ceiling)
        else:
            # Start quick and slow down to `interval`: a short job is seen done within a
            # fraction of a second, a long one costs a handful of extra cheap status reads.
            wanted = min(self.interval, FIRST_POLL * 2**self.polls)
            self.polls += 1
        remaining = self.remaining()
        if remaining <= 0:
            raise errors.InferenceTimeout(self.request_id, time.monotonic() - self.started)
        return min(wanted, remaining)


# --- the status stream ------------------------------------------------------------------------


def is_event_stream(response: httpx.Response) -> bool:
    """True when the server answered with a status stream (an older one answers 404)."""
    content_type = response.headers.get("content-type", "")
    return response.status_code == 200 and content_type.startswith("text/event-stream")


class EventStream:
    """Reads `text/event-stream` lines; `feed` returns the status body each `status` event
    carries, and None for anything else (comments such as keep-alives, other events).

    Raises ValueError for a status event that is not a JSON object, which makes `wait()`
    give up on the stream and poll instead.
    """

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> dict[str, Any] | None:
        if line:
            if not line.startswith(":"):  # a line starting with ":" is a comment
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    self._event = value
                elif field == "data":
                    self._data.append(value)
            return None
        # A blank line ends the event.
        event, data = self._event or "message", "\n".join(self._data)
        self._event, self._data = "", []
        if event != "status" or not data:
            return None
        body = json.loads(data)
        if not isinstance(body, dict):
            raise ValueError("status event is not a JSON object")
        return body


# --- edits, extensions and characters (OpenAI's /v1/videos operations) ----------------------


@dataclass(frozen=True)
class OperationCall:
    """One POST of an operation, built without I/O; either client sends it as it is."""

    url: str
    headers: dict[str, str]
    body: dict[str, Any]  # httpx's `json=`, or `files=` and `data=` for an upload


def character_call(base: str, api_key: str | None, name: str, video: Any) -> OperationCall:
    """`POST /v1/videos/characters`: a character named `name` from a video file or bytes."""
    if isinstance(video, str):
        raise TypeError("a character is made from a file: pass a Path or bytes")
    return OperationCall(
        operation_url(base, "characters"),
        api_headers(api_key),
        operation_request(video, {"name": name}),
    )


def operation_call(
    base: str,
    api_key: str | None,
    operation: str,
    video: Any,
    fields: Mapping[str, Any],
    idempotency_key: str | None,
    start_timeout: float | None = None,
    priority: str | None = None,
    execution_timeout: float | None = None,
) -> OperationCall:
    """`POST /v1/videos/{operation}` (`extensions`, `edits`) of `video` (an id, a path or
    bytes) with `fields`."""
    # Sent once: an upload is not worth re-sending blind. A caller's `idempotency_key` makes
    # a retry of the same call safe (the server matches it with the file's digest).
    return OperationCall(
        operation_url(base, operation),
        api_headers(
            api_key,
            idempotency_key or new_idempotency_key(),
            start_timeout,
            priority,
            execution_timeout,
        ),
        operation_request(video, fields),
    )


def operation_url(base: str, operation: str) -> str:
    """`extensions`, `edits` or `characters` under `/v1/videos`."""
    return f"{base}/v1/videos/{operation}"


def operation_request(source: Any, fields: Mapping[str, Any]) -> dict[str, Any]:
    """httpx arguments for an operation on `source`: a video id as JSON `{"id"}` (the form
    LiteLLM sends), a file or bytes as a multipart upload (the form the openai SDK sends)."""
    present = {k: v for k, v in fields.items() if v is not None}
    if isinstance(source, str):
        return {"json": {**present, "video": {"id": source}}}
    if isinstance(source, bytes | bytearray):
        name, data = "video.mp4", bytes(source)
    elif isinstance(source, os.PathLike):
        path = Path(source)
        name, data = path.name, path.read_bytes()
    else:
        raise TypeError(
            f"video must be a video id (str), a path (os.PathLike) or bytes, not {type(source)}"
        )
    form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in present.items()}
    return {"files": {"video": (name, data, _video_type(name))}, "data": form}


def _video_type(name: str) -> str:
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return {"webm": "video/webm", "mkv": "video/x-matroska", "mov": "video/quicktime"}.get(
        suffix, "video/mp4"
    )


def operation_job_ids(response: httpx.Response, base: str) -> tuple[str, str, str]:
    """`(request_id, status_url, response_url)` from an operation's OpenAI video object."""
    body = json_or_raise(response)
    video_id = body.get("id") if isinstance(body, dict) else None
    if not isinstance(video_id, str) or not video_id:
        raise errors.APIError("answer has no video id", status_code=response.status_code, body=body)
    return video_id, status_url(base, video_id), response_url(base, video_id)
