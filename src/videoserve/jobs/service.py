"""The job service: what every HTTP dialect, the CLI and the embedded worker call.

Routes translate HTTP to these calls and back, nothing more. The service validates against the
model's schema, applies the content policy, stores the reference image, and makes the job
durable, and paid for, before anyone is told its id.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from videoserve import errors
from videoserve.jobs import ledger
from videoserve.jobs.inputs import (
    InputKind,
    JobInput,
    JobInputs,
    PendingInput,
    is_manifest,
    manifest_key,
)
from videoserve.jobs.keys import ANONYMOUS
from videoserve.jobs.records import ApiKey, Job
from videoserve.jobs.states import Status, is_terminal
from videoserve.jobs.store import IdempotencyConflict, JobStore, NewJob
from videoserve.media.fetch import FetchPolicy, load_reference
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

    async def submit(
        self,
        key: ApiKey,
        model: str,
        raw_params: Any,
        *,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
        inputs: JobInputs | None = None,
        files: Sequence[PendingInput] = (),
    ) -> Job:
        """Validate, moderate, charge and durably queue a request; returns the stored job.

        `inputs` (an edit, an extension, characters) with its `files` are stored under the
        job's prefix before the job is, and the job's `input_key` names their manifest.
        `InsufficientCredits` when the key cannot pay the price: nothing is stored."""
        resolved = self.registry.resolve(model)
        params = validate_params(resolved.schema, raw_params)
        if len(params.prompt) > self.settings.max_prompt_chars:
            raise errors.InvalidRequest(
                f"prompt: must be at most {self.settings.max_prompt_chars} characters "
                f"(got {len(params.prompt)})",
                param="prompt",
            )
        check = getattr(resolved.backend, "check", None)
        if check is not None:
            check(params)  # the model's own limits (duration, image input): a 400 now, not later
        job_id = new_request_id()
        reference = None
        input_key = None
        if params.input_reference is not None:
            reference = await load_reference(params.input_reference, self.fetch_policy)
        blocked = self.moderator.check(params.prompt, reference.image if reference else None)
        if reference is not None and blocked is None:
            input_key = input_blob_key(job_id)
            await self.blobs.put_bytes(input_key, reference.png, "image/png")
        if inputs is not None and blocked is None:
            input_key = await self._store_inputs(job_id, inputs, files, input_key)
        price = self.price(key, resolved.served_by, params.duration)
        stored_params = params.model_dump(exclude_none=True)
        if params.input_reference is not None and params.input_reference.startswith("data:"):
            # The image itself lives in blob storage; a multi-megabyte URI has no place in a row.
            stored_params["input_reference"] = f"data URI ({len(params.input_reference)} chars)"
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
                    failed_with=blocked,
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

    def price(self, key: ApiKey, model: str, seconds: float) -> ledger.Charge | None:
        """What a request costs: the serving model's price per second times the duration.

        None with auth off: there is no key to charge."""
        if key.id == ANONYMOUS.id:
            return None
        return ledger.Charge(seconds, self.registry.price_per_second(model))

    async def get(self, key: ApiKey, job_id: str) -> Job:
        """The caller's job; NotFound for unknown, expired and other keys' ids alike."""
        job = await self.store.get(job_id, api_key_id=None if key.is_admin else key.id)
        if job is None or (job.api_key_id != key.id and not key.is_admin):
            raise errors.NotFound(f"request '{job_id}' not found")
        return job

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

    async def queue_position(self, job: Job) -> int | None:
        return await self.store.queue_position(job) if job.status == Status.QUEUED else None

    async def cancel(self, key: ApiKey, job_id: str) -> Job:
        job = await self.get(key, job_id)
        if is_terminal(job.status):
            return job
        return await self.store.request_cancel(
            job_id, job.api_key_id, self.settings.retention_seconds
        )
