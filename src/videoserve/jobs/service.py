"""The job service: what every HTTP dialect, the CLI and the embedded worker call.

Routes translate HTTP to these calls and back, nothing more. The service validates against the
model's schema, applies the content policy, stores the reference image, and makes the job
durable, and paid for, before anyone is told its id.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from PIL import Image

from videoserve import errors
from videoserve.jobs import clock, ledger, listing, text
from videoserve.jobs.failures import Failure, FailureCode
from videoserve.jobs.inputs import (
    InputKind,
    JobInput,
    JobInputs,
    Operation,
    PendingInput,
    is_manifest,
    manifest_key,
)
from videoserve.jobs.job_status import JobStatus, StatusReader
from videoserve.jobs.keys import ANONYMOUS
from videoserve.jobs.records import ApiKey, Job
from videoserve.jobs.states import Status, is_terminal
from videoserve.jobs.store import IdempotencyConflict, JobStore, NewJob
from videoserve.media.fetch import FetchPolicy, load_reference
from videoserve.media.spritesheet import build_spritesheet
from videoserve.models.params import validate_params
from videoserve.models.registry import ModelRegistry
from videoserve.moderation import Moderator
from videoserve.settings import Settings
from videoserve.storage.base import BlobNotFound, BlobStore

log = logging.getLogger("videoserve.jobs")


def new_request_id() -> str:
    # One id for every dialect: OpenAI's "video_" prefix, and unguessable.
    return "video_" + secrets.token_hex(16)


def request_hash(model: str, raw: Any) -> str:
    canonical = json.dumps({"model": model, "params": raw}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _hashed(raw: Any, inputs: JobInputs | None, files: Sequence[PendingInput]) -> Any:
    """What an Idempotency-Key must match: the params, plus the operation and input files."""
    if inputs is None:
        return raw
    digests = [hashlib.sha256(f.data).hexdigest() for f in files]
    return {"params": raw, "operation": inputs.operation.value, "files": digests}


def input_blob_key(job_id: str) -> str:
    return job_blob_prefix(job_id) + "input.png"


def job_blob_prefix(job_id: str) -> str:
    """Every file of a job lives under this prefix; deleting it deletes the job's files."""
    return f"jobs/{job_id}/"


def remix_marker_key(job_id: str) -> str:
    """A remix records its source here, beside the job's other files: it shares their
    lifetime (retention and delete remove the whole prefix)."""
    return f"{job_blob_prefix(job_id)}remix.json"


def spritesheet_key(output_key: str) -> str:
    """Beside the video it previews, in the attempt's folder."""
    return output_key.rsplit("/", 1)[0] + "/spritesheet.jpg"


Variant = Literal["video", "thumbnail", "spritesheet"]
_CONTENT_GONE = "content not found (it may have expired)"


@dataclass(frozen=True)
class Content:
    """A stored file of a completed job, ready to be served."""

    blob_key: str
    media_type: str


class JobService:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        registry: ModelRegistry,
        blobs: BlobStore,
        moderator: Moderator,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.blobs = blobs
        self.moderator = moderator
        self.fetch_policy = FetchPolicy(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            timeout=settings.fetch_timeout_seconds,
            allow_private=settings.allow_private_urls,
        )
        self._statuses = StatusReader(store.database)

    async def submit(
        self,
        key: ApiKey,
        model: str,
        raw_params: Any,
        *,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
        stored_input: str | None = None,
        inputs: JobInputs | None = None,
        files: Sequence[PendingInput] = (),
    ) -> Job:
        """Validate, moderate, charge and durably queue a request; returns the stored job.

        `stored_input` is the blob key of a reference image already checked and stored for
        another job (a remix): it is copied, never decoded from base64 again. `inputs` (an
        edit, an extension, characters) with its `files` are stored under the job's prefix
        before the job is, and the job's `input_key` names their manifest.
        `InsufficientCredits` when the key cannot pay the price: nothing is stored."""
        text.check_field("Idempotency-Key", idempotency_key, text.MAX_IDEMPOTENCY_KEY_CHARS)
        text.check_tree(raw_params)  # multipart fields and the CLI's too, not only JSON bodies
        resolved = self.registry.resolve(model)
        params = validate_params(resolved.schema, raw_params)
        if len(params.prompt) > self.settings.max_prompt_chars:
            raise errors.InvalidRequest(
                f"prompt: must be at most {self.settings.max_prompt_chars} characters "
                f"(got {len(params.prompt)})",
                param="prompt",
            )
        limits = self.registry.compute_limits(model)
        steps = getattr(params, "num_inference_steps", None)
        if limits.max_steps is not None and steps is not None and steps > limits.max_steps:
            raise errors.InvalidRequest(
                f"num_inference_steps: this model allows at most {limits.max_steps} steps "
                f"(got {steps})",
                param="num_inference_steps",
            )
        if stored_input is not None and params.input_reference is not None:
            raise errors.InvalidRequest(
                "input_reference: this request reuses its source's image", param="input_reference"
            )
        # The model's own limits (duration, image input): a 400 now, not later. A reused
        # image counts as an input image (the check only asks whether there is one).
        checked = params
        if stored_input is not None:
            checked = params.model_copy(update={"input_reference": "stored"})
        # An edit's `duration` is only its price bucket: its passes follow the source
        # (`continuation.edit_passes`, checked by `VideoOperations.edit`), chained or not.
        if inputs is None or inputs.operation != Operation.EDIT:
            resolved.backend.check(checked)
        job_id = new_request_id()
        png: bytes | None = None
        image: Image.Image | None = None
        if params.input_reference is not None:
            reference = await load_reference(params.input_reference, self.fetch_policy)
            png, image = reference.png, reference.image
        elif stored_input is not None:
            png = await self.blobs.get_bytes(stored_input)
            image = await asyncio.to_thread(_decode_png, png)
        blocked = self.moderator.check(params.prompt, image)
        input_key = None
        if png is not None and blocked is None:
            input_key = input_blob_key(job_id)
            await self.blobs.put_bytes(input_key, png, "image/png")
        if inputs is not None and blocked is None:
            input_key = await self._store_inputs(job_id, inputs, files, input_key)
        price = self.price(key, resolved.served_by, params.duration, limits.steps(steps))
        stored_params = params.model_dump(exclude_none=True)
        if params.input_reference is not None and params.input_reference.startswith("data:"):
            # The image itself lives in blob storage under `input_key`, which is the record;
            # a multi-megabyte URI (or a note standing in for it) has no place in the row.
            del stored_params["input_reference"]
        try:
            job, created = await self.store.create(
                NewJob(
                    id=job_id,
                    api_key_id=key.id,
                    model=model,
                    served_by=resolved.served_by,
                    params=stored_params,
                    max_attempts=self.settings.max_attempts,
                    input_key=input_key,
                    idempotency_key=idempotency_key,
                    request_hash=(
                        request_hash(model, _hashed(raw_params, inputs, files))
                        if idempotency_key
                        else None
                    ),
                    failed_with=Failure(FailureCode.MODERATION, blocked) if blocked else None,
                    retention_seconds=self.settings.retention_seconds,
                    webhook_url=webhook_url,
                    charge=price,
                )
            )
        except errors.InsufficientCredits:
            if input_key:
                await self.blobs.delete_prefix(job_blob_prefix(job_id))
            raise
        except IdempotencyConflict:
            if input_key:
                await self.blobs.delete_prefix(job_blob_prefix(job_id))
            raise errors.InvalidRequest(
                "Idempotency-Key was already used with a different request; "
                "use a new key for a new request"
            ) from None
        if not created and input_key:
            await self.blobs.delete_prefix(job_blob_prefix(job_id))
        if blocked:
            log.info("request %s blocked: %s", job.id, blocked)
        return job

    async def _store_inputs(
        self,
        job_id: str,
        inputs: JobInputs,
        files: Sequence[PendingInput],
        image_key: str | None,
    ) -> str:
        """Store the input files and their manifest under the job's prefix; the manifest key."""
        prefix = job_blob_prefix(job_id)
        stored = list(inputs.inputs)
        if image_key is not None:
            stored.append(JobInput(InputKind.IMAGE, image_key, "image/png"))
        for pending in files:
            key = f"{prefix}inputs/{pending.name}"
            await self.blobs.put_bytes(key, pending.data, pending.content_type)
            stored.append(JobInput(pending.kind, key, pending.content_type, pending.character_id))
        manifest = replace(inputs, inputs=tuple(stored))
        key = manifest_key(prefix)
        await self.blobs.put_bytes(key, manifest.to_json(), "application/json")
        return key

    async def inputs_of(self, job: Job) -> JobInputs | None:
        """A job's input manifest; None for a plain job (no inputs or only an image)."""
        if not is_manifest(job.input_key):
            return None
        assert job.input_key is not None
        try:
            return JobInputs.from_json(await self.blobs.get_bytes(job.input_key))
        except BlobNotFound:
            return None

    def price(
        self, key: ApiKey, model: str, seconds: float, steps: int = 0
    ) -> ledger.Charge | None:
        """What a request costs: the serving model's price per second, plus its price per
        step per second times the steps, times the duration.

        None with auth off: there is no key to charge."""
        if key.id == ANONYMOUS.id:
            return None
        per_step = self.registry.compute_limits(model).price_per_step_second
        return ledger.Charge(seconds, self.registry.price_per_second(model), steps, per_step)

    async def get(self, key: ApiKey, job_id: str) -> Job:
        """The caller's job; NotFound for unknown, expired and other keys' ids alike."""
        if not text.could_be_id(job_id):
            raise errors.NotFound("request not found: no request can have that id")
        job = await self.store.get(job_id, api_key_id=None if key.is_admin else key.id)
        if job is None or (job.api_key_id != key.id and not key.is_admin):
            raise errors.NotFound(f"request '{job_id}' not found")
        return job

    async def status(self, key: ApiKey, job_id: str) -> JobStatus:
        """What a poll shows of the caller's job, read afresh; NotFound exactly as `get`."""
        if not text.could_be_id(job_id):
            raise errors.NotFound("request not found: no request can have that id")
        found = await self._statuses.read(job_id, clock.now())
        if found is None or (found.api_key_id != key.id and not key.is_admin):
            raise errors.NotFound(f"request '{job_id}' not found")
        return found

    async def wait(self, key: ApiKey, job_id: str, timeout: float) -> Job:
        """Block until the job is COMPLETED or FAILED; RequestTimeout after `timeout` s."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            job = await self.get(key, job_id)
            if is_terminal(job.status):
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.RequestTimeout(
                    f"request '{job_id}' did not finish within {timeout:g}s; it is still "
                    f"{job.status.value.lower()}: poll GET /v2/requests/{job_id}/status",
                    request_id=job_id,
                )
            # A notification wakes us at once; the poll interval covers other processes.
            await self.store.wait_for_change(job_id, min(left, self.settings.poll_interval_seconds))

    async def wait_for_change(self, job_id: str, timeout: float) -> bool:
        """Until the job changes (in this process, or any on PostgreSQL) or `timeout` passes;
        True if it changed. Callers re-read the job either way."""
        return await self.store.wait_for_change(job_id, timeout)

    async def queue_position(self, job: Job | JobStatus) -> int | None:
        return await self.store.queue_position(job) if job.status == Status.QUEUED else None

    async def cancel(self, key: ApiKey, job_id: str) -> Job:
        job = await self.get(key, job_id)
        if is_terminal(job.status):
            return job
        return await self.store.request_cancel(
            job_id, job.api_key_id, self.settings.retention_seconds
        )

    async def list(
        self,
        key: ApiKey,
        *,
        after: str | None = None,
        limit: int = 20,
        order: listing.Order = "desc",
    ) -> tuple[list[Job], bool]:
        """A page of the caller's jobs (every key's for an admin key) and whether more follow."""
        owner = None if key.is_admin else key.id
        return await listing.list_jobs(
            self.store.database, owner, after=after, limit=limit, order=order
        )

    # --- deletion: one path for DELETE and for the retention sweep ----------------------------
    async def delete(self, key: ApiKey, job_id: str) -> Job:
        """Cancel the caller's job if it still runs, then delete its files and its row."""
        job = await self.get(key, job_id)
        if not is_terminal(job.status):
            job = await self.cancel(key, job.id)
        await self.purge([job])
        log.info("request %s deleted", job.id)
        return job

    async def purge(self, jobs: Sequence[Job]) -> int:
        """Delete jobs' files, then their rows; returns the rows deleted.

        A job that was still running may have had files stored in between by its worker; with
        the row gone it can never complete (its fenced update finds nothing), so its prefix is
        cleared once more after the row, and what is left then is all it will leave."""
        if not jobs:
            return 0
        for job in jobs:
            await self.blobs.delete_prefix(job_blob_prefix(job.id))
        deleted = await self.store.delete([job.id for job in jobs])
        for job in jobs:
            if not is_terminal(job.status):
                await self.blobs.delete_prefix(job_blob_prefix(job.id))
        return deleted

    async def purge_expired(self, batch: int = 100) -> int:
        """Delete every result past its retention: the files first, then the rows."""
        deleted = 0
        while expired := await self.store.expired(limit=batch):
            deleted += await self.purge(expired)
        return deleted

    # --- content and remix ---------------------------------------------------------------------
    async def content(self, key: ApiKey, job_id: str, variant: Variant) -> Content:
        """Which stored file answers a download; a spritesheet is made on first request."""
        job = await self.get(key, job_id)
        if job.status != Status.COMPLETED or job.result is None:
            raise errors.InvalidRequest(
                f"video '{job.id}' is {job.status.value.lower()}: its content can be downloaded "
                "once it is completed"
            )
        if variant == "video":
            return Content(job.result.output_key, "video/mp4")
        if variant == "thumbnail":
            return Content(job.result.thumbnail_key, "image/jpeg")
        return Content(await self._spritesheet(job, job.result.output_key), "image/jpeg")

    async def _spritesheet(self, job: Job, output_key: str) -> str:
        sheet_key = spritesheet_key(output_key)
        if await self.blobs.exists(sheet_key):
            return sheet_key
        path = self.blobs.local_path(output_key)
        try:
            if path is not None and not path.is_file():
                raise BlobNotFound(output_key)
            source = path if path is not None else await self.blobs.get_bytes(output_key)
        except BlobNotFound:
            raise errors.NotFound(_CONTENT_GONE) from None
        data = await asyncio.to_thread(build_spritesheet, source)
        # Two first requests at once both build it; writes are atomic, so either copy is whole.
        await self.blobs.put_bytes(sheet_key, data, "image/jpeg")
        if await self.store.get(job.id) is None:  # deleted meanwhile: leave nothing behind
            await self.blobs.delete_prefix(job_blob_prefix(job.id))
            raise errors.NotFound(f"request '{job.id}' not found")
        return sheet_key

    async def remix(
        self, key: ApiKey, source_id: str, prompt: Any, *, idempotency_key: str | None = None
    ) -> Job:
        """A new job from a completed one: its parameters and reference image, a new prompt."""
        source = await self.get(key, source_id)
        if source.status != Status.COMPLETED:
            raise errors.InvalidRequest(
                f"video '{source.id}' is {source.status.value.lower()}: only a completed video "
                "can be remixed"
            )
        if is_manifest(source.input_key):
            # An edit or an extension: `jobs.video_ops` repeats it on the same source.
            raise errors.InvalidRequest(f"video '{source.id}' is an edit or an extension")
        raw = {k: v for k, v in source.params.items() if k != "input_reference"}
        raw["prompt"] = prompt
        job = await self.submit(
            key,
            source.model,
            raw,
            idempotency_key=idempotency_key,
            stored_input=source.input_key,
        )
        await self.mark_remix(job.id, source.id)
        return job

    async def mark_remix(self, job_id: str, source_id: str) -> None:
        """Record that `job_id` was remixed from `source_id` (a blob under the job's prefix,
        so the one deletion path removes it with the job)."""
        marker = json.dumps({"remixed_from_video_id": source_id}).encode()
        await self.blobs.put_bytes(remix_marker_key(job_id), marker, "application/json")

    async def remixed_from(self, job_id: str) -> str | None:
        """The id of the video this one was remixed from, if it was."""
        try:
            marker = json.loads(await self.blobs.get_bytes(remix_marker_key(job_id)))
        except BlobNotFound:
            return None
        except ValueError:
            log.warning("request %s: unreadable remix marker", job_id)
            return None
        source = marker.get("remixed_from_video_id") if isinstance(marker, dict) else None
        return source if isinstance(source, str) else None


def _decode_png(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("RGB")
