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
from sqlalchemy.exc import DataError, IntegrityError

from videoserve import clock, errors
from videoserve.jobs import deadlines, ledger, listing, remixes, text, tickets
from videoserve.jobs.estimates import StartEstimates
from videoserve.jobs.failures import Failure, FailureCode
from videoserve.jobs.fairness import Priority, check_bound
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
from videoserve.jobs.queue_options import DEFAULTS, QueueOptions
from videoserve.jobs.records import ApiKey, Job
from videoserve.jobs.states import Status, is_terminal
from videoserve.jobs.store import IdempotencyConflict, JobStore, NewJob
from videoserve.jobs.workers import ServedModels
from videoserve.media.fetch import FetchPolicy, load_reference
from videoserve.media.spritesheet import build_spritesheet
from videoserve.models.params import validate_params
from videoserve.models.registry import ModelRegistry
from videoserve.moderation import Moderator
from videoserve.resolver import Resolver
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


def preview_key(job_id: str) -> str:
    """The latest preview image of a running job (deleted when the job ends)."""
    return f"{job_blob_prefix(job_id)}preview.jpg"


def remix_marker_key(job_id: str) -> str:
    """Where a remix made before migration 12 recorded its source (now the `remixed_from`
    column; the marker is read once, by `JobService.settle_remix_sources`)."""
    return f"{job_blob_prefix(job_id)}remix.json"


def spritesheet_key(output_key: str) -> str:
    """Beside the video it previews, in the attempt's folder."""
    return output_key.rsplit("/", 1)[0] + "/spritesheet.jpg"


Variant = Literal["video", "thumbnail", "spritesheet", "preview"]
_CONTENT_GONE = "content not found (it may have expired)"


@dataclass(frozen=True)
class Content:
    """A stored file of a completed job, ready to be served."""

    blob_key: str
    media_type: str


@dataclass(frozen=True)
class Preview:
    """A running job's latest preview: a JPEG strip of a few frames across time."""

    image: bytes
    step: int  # the denoising step it shows
    steps: int | None


class JobService:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        registry: ModelRegistry,
        blobs: BlobStore,
        moderator: Moderator,
        served_models: ServedModels | None = None,
        start_estimates: StartEstimates | None = None,
    ) -> None:
        self.settings = settings
        # What live workers serve, re-read every second or two: a queued job's waiting reason.
        self._served_models = served_models
        # About when a queued job starts, from per-model facts re-read every few seconds.
        self._start_estimates = start_estimates
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
        # input_reference hosts: a resolver of their own, so webhook names cannot slow them.
        self.input_hosts = Resolver(settings.resolve_timeout_seconds)
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
        remixed_from: str | None = None,
        queue: QueueOptions = DEFAULTS,
    ) -> Job:
        """Validate, moderate, charge and durably queue a request; returns the stored job.

        `stored_input` is the blob key of a reference image already checked and stored for
        another job (a remix): it is copied, never decoded from base64 again. `inputs` (an
        edit, an extension, characters) with its `files` are stored under the job's prefix
        before the job is, and the job's `input_key` names their manifest. `remixed_from`:
        the id of the video a remix repeats, recorded in the job's row. `queue`: its
        `start_timeout` (X-Start-Timeout, else the server's default) bounds its wait for a
        worker; its `priority`
        (X-Queue-Priority, default normal) is its class, at most the key's bound (`Forbidden`
        naming it); its `execution_timeout` (X-Execution-Timeout) bounds its run, within the
        model's own limit (above it, `InvalidRequest`). `InsufficientCredits` when the key
        cannot pay, `StorageFull` when the disk is: either way nothing is stored."""
        text.check_field("Idempotency-Key", idempotency_key, text.MAX_IDEMPOTENCY_KEY_CHARS)
        priority = Priority.NORMAL if queue.priority is None else queue.priority
        check_bound(priority, Priority(key.max_priority), admin=key.is_admin)
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
        deadlines.check_execution_timeout(
            queue.execution_timeout,
            limits.max_job_seconds or self.settings.max_job_seconds,
            resolved.served_by,
        )
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
            self.registry.check_split(resolved, checked)
        job_id = new_request_id()
        png: bytes | None = None
        image: Image.Image | None = None
        if params.input_reference is not None:
            reference = await load_reference(
                params.input_reference, self.fetch_policy, resolver=self.input_hosts
            )
            png, image = reference.png, reference.image
        elif stored_input is not None:
            png = await self.blobs.get_bytes(stored_input)
            image = await asyncio.to_thread(_decode_png, png)
        blocked = self.moderator.check(params.prompt, image)
        price = self.price(key, resolved.served_by, params.duration, limits.steps(steps))
        stored_params = params.model_dump(exclude_none=True)
        if params.input_reference is not None and params.input_reference.startswith("data:"):
            # The image itself lives in blob storage under `input_key`, which is the record;
            # a multi-megabyte URI (or a note standing in for it) has no place in the row.
            del stored_params["input_reference"]
        input_key = None
        stores_files = blocked is None and (png is not None or inputs is not None)
        try:
            if png is not None and blocked is None:
                input_key = input_blob_key(job_id)
                await self.blobs.put_bytes(input_key, png, "image/png")
            if inputs is not None and blocked is None:
                input_key = await self._store_inputs(job_id, inputs, files, input_key)
        except Exception:
            # The disk filled up part way (`StorageFull`): no row will name what was stored,
            # and the retention sweep, which works from rows, would never find it.
            if stores_files:
                await self._forget_inputs(job_id)
            raise
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
                    start_timeout=(
                        self.settings.start_timeout_seconds
                        if queue.start_timeout is None
                        else queue.start_timeout
                    ),
                    priority=priority,
                    execution_timeout=queue.execution_timeout,
                    remixed_from=remixed_from,
                    delivered_seconds=(
                        None if inputs is None else inputs.total_seconds(float(params.duration))
                    ),
                )
            )
        except (errors.InsufficientCredits, IdempotencyConflict, DataError, IntegrityError) as exc:
            # The row was refused, so nothing holds the inputs: none may stay. (Other errors
            # leave them: the row may have been committed before the error reached us.)
            if stores_files:
                await self._forget_inputs(job_id)
            if isinstance(exc, IdempotencyConflict):
                raise errors.InvalidRequest(
                    "Idempotency-Key was already used with a different request; "
                    "use a new key for a new request"
                ) from None
            raise
        if not created and stores_files:  # the earlier request's job has its own
            await self._forget_inputs(job_id)
        if blocked:
            log.info("request %s blocked: %s", job.id, blocked)
        return job

    async def _forget_inputs(self, job_id: str) -> None:
        """Delete the files stored for a job that was never written (or that an earlier
        request with the same Idempotency-Key already is). Shielded: a client hanging up
        must not cancel the cleanup half way; a failure is logged, never raised over the
        error that brought us here."""
        try:
            await asyncio.shield(self.blobs.delete_prefix(job_blob_prefix(job_id)))
        except Exception:
            log.exception("request %s: its stored inputs could not be deleted", job_id)

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

    async def older_inputs(self, job: Job) -> JobInputs | None:
        """The manifest the video view needs for an edit or extension made before migration 15
        (its delivered seconds were not in the row); None, without a read, for any other."""
        if job.delivered_seconds is not None:
            return None
        return await self.inputs_of(job)

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

    async def waiting(self, job: Job | JobStatus) -> tuple[int | None, str | None, float | None]:
        """A QUEUED job's place in line, why it waits beyond that (None: a live worker serves
        its model) and about when it starts: one index seek, the rest from per-process caches
        (`job` must be QUEUED)."""
        # A status poll's path: the caches answer without a coroutine once this process has
        # read them (this path had five nested coroutines, ~0.15 us each on this machine).
        if isinstance(job, JobStatus) and job.ticket is not None:
            # A poll's read brought the head of the job's queue with the job: no second read.
            position = tickets.position(job.ticket, job.queue_head)
        else:
            position = await self.store.queue_position(job)
        served_by = job.served_by
        reason = None
        models = self._served_models
        if models is not None:
            if models.answers_now():
                reason = models.reason_now(served_by)
            else:
                reason = await models.waiting_reason(served_by)
        estimate = None
        estimates = self._start_estimates
        if estimates is not None:
            if estimates.answers_now(served_by):
                estimate = estimates.seconds_now(served_by, position)
            else:
                estimate = await estimates.seconds(served_by, position)
        return position, reason, estimate

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
    async def preview(self, key: ApiKey, job_id: str) -> Preview:
        """The latest preview image of the caller's running job; 404 before the first and
        after the job ends (previews live only while it runs)."""
        job = await self.get(key, job_id)
        if job.status != Status.PROCESSING:
            state = "has not started" if job.status == Status.QUEUED else "has ended"
            raise errors.NotFound(
                f"no preview: request '{job.id}' {state} (previews exist only while it runs)"
            )
        if job.preview_step is None:
            raise errors.NotFound(f"no preview of request '{job.id}' yet")
        try:
            data = await self.blobs.get_bytes(preview_key(job.id))
        except BlobNotFound:
            raise errors.NotFound(f"no preview of request '{job.id}' now") from None
        return Preview(data, job.preview_step, job.steps)

    async def content(self, key: ApiKey, job_id: str, variant: Variant) -> Content:
        """Which stored file answers a download; a spritesheet is made on first request."""
        if variant == "preview":
            raise AssertionError("a preview is `preview`'s, not a stored file's")
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
        self,
        key: ApiKey,
        source: Job,
        prompt: Any,
        *,
        idempotency_key: str | None = None,
        queue: QueueOptions = DEFAULTS,
    ) -> Job:
        """A new job from a completed one of the key's (`get` it first): its parameters and
        reference image, a new prompt."""
        if source.status != Status.COMPLETED:
            raise errors.InvalidRequest(
                f"video '{source.id}' is {source.status.value.lower()}: only a completed video "
                "can be remixed"
            )
        if is_manifest(source.input_key):
            # An edit or an extension: `services.video_ops` repeats it on the same source.
            raise errors.InvalidRequest(f"video '{source.id}' is an edit or an extension")
        raw = {k: v for k, v in source.params.items() if k != "input_reference"}
        raw["prompt"] = prompt
        job = await self.submit(
            key,
            source.model,
            raw,
            idempotency_key=idempotency_key,
            stored_input=source.input_key,
            remixed_from=source.id,
            queue=queue,
        )
        return job

    async def remixed_from(self, job: Job) -> str | None:
        """The id of the video `job` was remixed from, if it was: its column, read with the job
        (a row made before migration 12 and not settled yet: its marker blob)."""
        if remixes.known(job.remixed_from):
            return job.remixed_from
        return await self._read_remix_marker(job.id)

    async def settle_remix_sources(self, batch: int = 100) -> int:
        """Move the remix sources of rows made before migration 12 from their marker blobs to
        the column; the rows settled. Run once per process, at its first sweep."""
        database = self.store.database
        settled = 0
        while unread := await remixes.unread(database, batch):
            for job_id in unread:
                await remixes.settle(database, job_id, await self._read_remix_marker(job_id))
            settled += len(unread)
        return settled

    async def _read_remix_marker(self, job_id: str) -> str | None:
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
