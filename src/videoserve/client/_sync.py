"""The blocking client: `Client` and the `Job` handle that `submit_async` returns."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Generator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from videoserve.client import _common

StatusCallback = Callable[[dict[str, Any]], object]


class Job:
    """A submitted request: poll it, wait for it, read its result, download its video."""

    def __init__(self, client: Client, request_id: str, status_url: str, response_url: str) -> None:
        self.client = client
        self.request_id = request_id
        self.status_url = status_url
        self.response_url = response_url

    def __repr__(self) -> str:
        return f"Job(request_id={self.request_id!r})"

    def status(self) -> dict[str, Any]:
        """The current status body; a FAILED one is returned, not raised (it carries `error`)."""
        return self.client._status(self.status_url)

    def result(self) -> dict[str, Any]:
        """The final body (`output`, `width`, `metrics`...); raises `InferenceFailed` if FAILED."""
        return _common.json_or_raise(self.client._send("GET", self.response_url))

    def wait(
        self,
        timeout: float = 900,
        interval: float = 2.0,
        on_status: StatusCallback | None = None,
    ) -> dict[str, Any]:
        """Wait until COMPLETED and return the result.

        Follows the server's status stream (`/events`) when it offers one, so each change is
        seen as it happens; otherwise, or when the stream breaks off, polls (quickly at first,
        then every `interval`). Raises `InferenceFailed` when the request fails and
        `InferenceTimeout` at the deadline. Rate limits, 502/503 and dropped connections while
        polling are waited out (honouring `Retry-After`) rather than failing a job that is
        still running on the server.
        """
        poll = _common.Poll(self.request_id, timeout, interval)
        follow = True
        last: dict[str, Any] | None = None
        while True:
            per_call = _common.capped_timeout(self.client.timeout, poll.remaining())
            try:
                body = self.client._status(self.status_url, http_timeout=per_call)
                if on_status is not None and body != last:
                    on_status(body)
                last = body
                if poll.finished(body):
                    return self.result()
                if follow:
                    # One status read first: a finished job is answered at once, and a server
                    # without the stream costs one 404. After a broken stream, poll.
                    follow = False
                    with contextlib.closing(self._stream_statuses(poll)) as statuses:
                        for body in statuses:
                            if on_status is not None and body != last:
                                on_status(body)
                            last = body
                            if poll.finished(body):
                                return self.result()
                pause = poll.pause()
            except _common.TRANSIENT_ERRORS as exc:
                pause = poll.pause(exc)
            time.sleep(pause)

    def _stream_statuses(self, poll: _common.Poll) -> Generator[dict[str, Any], None, None]:
        """Status bodies from the server's event stream until it ends; nothing (and no error)
        when it is unavailable or breaks off. `InferenceTimeout` at the deadline."""
        url = _common.request_action_url(
            self.status_url, self.client.base_url, self.request_id, "events"
        )
        events = _common.EventStream()
        try:
            with self.client._http.stream(
                "GET",
                url,
                headers=_common.stream_headers(self.client.api_key),
                timeout=_common.stream_timeout(self.client.timeout, poll.remaining()),
            ) as response:
                if not _common.is_event_stream(response):
                    return
                for line in response.iter_lines():
                    poll.check_deadline()
                    body = events.feed(line)
                    if body is not None:
                        yield body
        except (httpx.HTTPError, ValueError):
            return

    def cancel(self) -> dict[str, Any]:
        """Cancel the request: a queued one fails at once, a running one stops at its next step.

        Returns the status body plus `cancelled` (False when it had already finished) and a
        `message` saying which happened; the job then ends FAILED ("cancelled by the user").
        """
        url = _common.request_action_url(
            self.status_url, self.client.base_url, self.request_id, "cancel"
        )
        return _common.cancel_body(self.client._send("POST", url))

    def download(self, path: str | os.PathLike[str], *, variant: str = "video") -> Path:
        """Save the video (or `variant="thumbnail"`) to `path`; a folder gets `<id>.mp4` in it.

        Streams to a temporary sibling and renames it, so `path` never holds a partial file.
        """
        url = _common.output_url(self.result(), variant, self.client.base_url)
        target = _common.download_target(path, self.request_id, url)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = _common.temp_path(target)
        try:
            # No API key here: the URL is signed, and may point at another host (S3).
            with self.client._http.stream(
                "GET", url, headers={"User-Agent": _common.USER_AGENT}, follow_redirects=True
            ) as response:
                if not response.is_success:
                    response.read()
                    raise _common.error_for(response)
                with part.open("wb") as file:
                    for chunk in response.iter_bytes():
                        file.write(chunk)
            os.replace(part, target)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return target


class Client:
    """A videoserve server, reached over HTTP.

    `api_key` defaults to `VIDEOSERVE_API_KEY`, `base_url` to `VIDEOSERVE_BASE_URL` or
    http://127.0.0.1:8000 (a trailing `/v1` is accepted, as the segmind and openai SDKs take it).
    Pass `http_client` to reuse your own `httpx.Client`; it is then yours to close.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float | httpx.Timeout | None = _common.DEFAULT_TIMEOUT,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.api_key = _common.resolve_api_key(api_key)
        self.base_url = _common.normalise_base_url(base_url)
        self.timeout = _common.build_timeout(timeout)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=self.timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def submit_async(
        self,
        model: str,
        /,
        *,
        idempotency_key: str | None = None,
        start_timeout: float | None = None,
        priority: str | None = None,
        execution_timeout: float | None = None,
        **params: Any,
    ) -> Job:
        """Queue a request and return its `Job` at once.

        Connection errors and 502/503 are retried a few times with the same Idempotency-Key
        (generated unless given), so a retried submit never creates a second job.
        `start_timeout`: seconds it may wait for a worker (X-Start-Timeout); past that it
        fails with code `expired`, refunded. `priority`: "low", "normal" (default) or "high"
        (X-Queue-Priority), at most the key's bound. `execution_timeout`: seconds it may run once
        started (X-Execution-Timeout, at most the model's limit); past that it fails with
        code `timeout`, refunded.
        """
        response = self._submit(
            _common.submit_url(self.base_url, model),
            params,
            idempotency_key,
            blocking=False,
            start_timeout=start_timeout,
            priority=priority,
            execution_timeout=execution_timeout,
        )
        request_id, status_url, response_url = _common.submitted(response, self.base_url)
        return Job(self, request_id, status_url, response_url)

    def run(self, model: str, /, **params: Any) -> dict[str, Any]:
        """Submit and wait up to 600 s for the result body."""
        return self.submit_async(model, **params).wait(timeout=600)

    def run_sync(
        self,
        model: str,
        /,
        *,
        start_timeout: float | None = None,
        priority: str | None = None,
        execution_timeout: float | None = None,
        **params: Any,
    ) -> bytes:
        """The MP4 bytes from the blocking `POST /v1/{model}`."""
        response = self._submit(
            _common.run_sync_url(self.base_url, model),
            params,
            None,
            blocking=True,
            start_timeout=start_timeout,
            priority=priority,
            execution_timeout=execution_timeout,
        )
        return _common.video_bytes(response)

    def models(self) -> list[dict[str, Any]]:
        """Every model the server knows, with its parameter schema and availability."""
        return _common.models_list(self._send("GET", _common.models_url(self.base_url)))

    def get_job(self, request_id: str) -> Job:
        """A `Job` for a request submitted earlier (by this process or another)."""
        return Job(
            self,
            request_id,
            _common.status_url(self.base_url, request_id),
            _common.response_url(self.base_url, request_id),
        )

    def extend(
        self,
        video: str | os.PathLike[str] | bytes,
        prompt: str,
        *,
        seconds: int | str = 4,
        model: str | None = None,
        idempotency_key: str | None = None,
        start_timeout: float | None = None,
        priority: str | None = None,
        execution_timeout: float | None = None,
        **params: Any,
    ) -> Job:
        """Continue `video` (a video id, a file path or MP4 bytes) by `seconds`: one stitched
        video, whose job this returns at once. The model defaults to the source video's."""
        fields = {"prompt": prompt, "seconds": str(seconds), "model": model, **params}
        call = _common.operation_call(
            self.base_url,
            self.api_key,
            "extensions",
            video,
            fields,
            idempotency_key,
            start_timeout,
            priority,
            execution_timeout,
        )
        return Job(self, *_common.operation_job_ids(self._post(call), self.base_url))

    def edit(
        self,
        video: str | os.PathLike[str] | bytes,
        prompt: str,
        *,
        strength: float | None = None,
        model: str | None = None,
        idempotency_key: str | None = None,
        start_timeout: float | None = None,
        priority: str | None = None,
        execution_timeout: float | None = None,
        **params: Any,
    ) -> Job:
        """Edit `video` (a video id, a file path or MP4 bytes) with `prompt`; same duration
        and aspect. `strength` (0-1, server default 0.6) says how far it may move."""
        fields = {"prompt": prompt, "strength": strength, "model": model, **params}
        call = _common.operation_call(
            self.base_url,
            self.api_key,
            "edits",
            video,
            fields,
            idempotency_key,
            start_timeout,
            priority,
            execution_timeout,
        )
        return Job(self, *_common.operation_job_ids(self._post(call), self.base_url))

    def create_character(self, name: str, video: os.PathLike[str] | bytes) -> dict[str, Any]:
        """A character from a video file: `{id, object, created_at, name, expires_at}`."""
        call = _common.character_call(self.base_url, self.api_key, name, video)
        return _common.json_or_raise(self._post(call))

    def _post(self, call: _common.OperationCall) -> httpx.Response:
        return self._http.request(
            "POST", call.url, headers=call.headers, timeout=self.timeout, **call.body
        )

    # --- I/O ----------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        idempotency_key: str | None = None,
        http_timeout: httpx.Timeout | None = None,
        start_timeout: float | None = None,
        priority: str | None = None,
        execution_timeout: float | None = None,
    ) -> httpx.Response:
        return self._http.request(
            method,
            url,
            json=json,
            headers=_common.api_headers(
                self.api_key, idempotency_key, start_timeout, priority, execution_timeout
            ),
            timeout=http_timeout or self.timeout,
        )

    def _status(self, url: str, *, http_timeout: httpx.Timeout | None = None) -> dict[str, Any]:
        return _common.status_body(self._send("GET", url, http_timeout=http_timeout))

    def _submit(
        self,
        url: str,
        params: dict[str, Any],
        idempotency_key: str | None,
        *,
        blocking: bool,
        start_timeout: float | None = None,
        priority: str | None = None,
        execution_timeout: float | None = None,
    ) -> httpx.Response:
        key = idempotency_key or _common.new_idempotency_key()
        timeout = _common.sync_timeout(self.timeout) if blocking else self.timeout
        retry = _common.SubmitRetry()
        while True:
            try:
                response = self._send(
                    "POST",
                    url,
                    json=params,
                    idempotency_key=key,
                    http_timeout=timeout,
                    start_timeout=start_timeout,
                    priority=priority,
                    execution_timeout=execution_timeout,
                )
                if response.status_code in (502, 503):
                    raise _common.error_for(response)
                return response
            except _common.SUBMIT_RETRY_ERRORS as exc:
                time.sleep(retry.pause_after(exc, blocking=blocking))
