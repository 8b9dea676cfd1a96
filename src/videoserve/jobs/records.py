"""Immutable records read from the job database."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from videoserve.jobs.failures import FailureCode
from videoserve.jobs.inputs import is_manifest
from videoserve.jobs.states import Status

# How views name a reference image that arrived inline (a data URI or an upload).
INLINE_IMAGE_NOTE = "data URI (stored with the request)"


@dataclass(frozen=True)
class JobResult:
    """The facts of a finished video, written by the worker and read by every view.

    Stored as JSON in `jobs.result`; `extra` keeps keys a newer writer added (so an older
    reader passes them through rather than dropping them)."""

    output_key: str  # blob key of the MP4
    thumbnail_key: str  # blob key of the JPEG thumbnail
    served_by: str  # the model that made it (after aliases)
    width: int
    height: int
    fps: float
    frames: int
    seconds: float  # the video's duration as encoded
    codec: str | None = None
    encoder: str | None = None  # which H.264 encoder ran: libx264 or h264_nvenc
    has_audio: bool = False  # an AAC track is muxed in (results from before sound: silent)
    audio_sample_rate: int | None = None  # Hz, when has_audio
    audio_codec: str | None = None  # "aac", when has_audio
    seed: int | None = None
    segments: int = 1  # passes chained for a duration over one pass
    load_time: float | None = None  # seconds loading its model's weights (0: already loaded)
    inference_time: float | None = None  # seconds in the model, prompt to decoded frames
    encode_time: float | None = None  # seconds making the thumbnail and the MP4 (not storing)
    store_time: float | None = None  # seconds storing the files, after encoding
    started_at: float | None = None  # when this attempt began producing it
    # How a worker group split it: {"ranks": 2, "ulysses": 2}; None: one device.
    parallel: dict[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**self.extra, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any], *, served_by: str) -> JobResult:
        """Read a stored result; rows written before `served_by` was recorded get the job's."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("served_by", served_by)
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})


@dataclass(frozen=True)
class Job:
    """One video request, as stored."""

    id: str  # the request_id clients see, in every dialect
    api_key_id: str  # owner; other keys get 404
    model: str  # the public model name the client asked for
    served_by: str  # the model that runs it (after aliases)
    params: dict[str, Any]  # validated parameters
    status: Status
    progress: int  # 0-100 while PROCESSING
    attempt: int  # how many times a worker claimed it
    max_attempts: int  # claims allowed before a lost lease fails the job
    created_at: float
    input_key: str | None = None  # blob key of the stored reference image
    lease_token: str | None = None  # the current claim's fencing token
    lease_expires_at: float | None = None
    worker_id: str | None = None
    cancel_requested: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None  # when the result and its video are deleted
    error: str | None = None
    result: JobResult | None = None  # the video's facts once COMPLETED
    idempotency_key: str | None = None
    request_hash: str | None = None
    webhook_url: str | None = None  # where video.completed / video.failed are delivered
    cost: float | None = None  # credits charged at submit; None when nothing was charged
    failure: FailureCode | None = None  # why it FAILED, as a code; `error` is the message
    ticket: int | None = None  # place in its model's queue (see `tickets`); None if never queued
    phase: str | None = None  # what a PROCESSING job does now (`phases.Phase`'s value)
    step: int | None = None  # denoising steps done, while denoising
    steps: int | None = None  # denoising steps in all
    preview_step: int | None = None  # the step of its latest preview image; None: none yet
    start_deadline: float | None = None  # unclaimed by then, it fails `expired`; None: never
    remixed_from: str | None = None  # the video a remix repeats (`remixes`: unread on old rows)
    priority: int = 1  # class: 0 low, 1 normal, 2 high (`fairness.Priority`)
    start_tag: float = 0.0  # fair share's virtual start time; the claim's order in a class
    expected_seconds: float | None = None  # GPU-seconds fair share charged it at submit
    execution_timeout: float | None = None  # seconds it may run (X-Execution-Timeout); None:
    # the model's own limit
    delivered_seconds: float | None = None  # an edit's or extension's duration as delivered;
    # None: the `duration` parameter's (and on rows before migration 15, the manifest's)

    @classmethod
    def from_row(cls, row: Any) -> Job:
        """The job in a row of `jobs` (extra columns, such as the `_notify_*` wake-ups a
        RETURNING carries, are skipped; a field whose column is not there takes its default).

        Why not `cls(**data)`: a frozen dataclass sets each of its 37 fields through
        `object.__setattr__`, 20-30 us a row on this project's test host, a twentieth of a
        submit's CPU; filling the new instance's `__dict__` is what those calls do, at once."""
        known = _JOB_FIELDS
        data = {name: value for name, value in zip(row._fields, row, strict=True) if name in known}
        missing = _JOB_REQUIRED.difference(data)
        if missing:
            raise TypeError(f"a row of jobs without {sorted(missing)}")
        data["status"] = Status(data["status"])
        data["cancel_requested"] = bool(data.get("cancel_requested"))
        if data.get("failure") is not None:
            data["failure"] = FailureCode(data["failure"])
        if data.get("result") is not None:
            data["result"] = JobResult.from_json(data["result"], served_by=data["served_by"])
        job = object.__new__(cls)
        job.__dict__.update(_JOB_DEFAULTS, **data)
        return job

    def shown_params(self) -> dict[str, Any]:
        """The parameters as views show them: an inline image (stored as a blob, never in the
        row) appears as a short note rather than megabytes of base64. A manifest (edits,
        extensions, characters) is not an image: its operation's own fields say what it used."""
        if (
            self.input_key is None
            or "input_reference" in self.params
            or is_manifest(self.input_key)
        ):
            return self.params
        return {**self.params, "input_reference": INLINE_IMAGE_NOTE}


# What `Job.from_row` fills: every field, the defaults of those a row may lack.
_JOB_FIELDS = frozenset(f.name for f in fields(Job))
_JOB_DEFAULTS = {f.name: f.default for f in fields(Job) if f.default is not MISSING}
_JOB_REQUIRED = _JOB_FIELDS - _JOB_DEFAULTS.keys()


@dataclass(frozen=True)
class Lease:
    """A worker's claim on a job: finishing requires all three (fencing)."""

    job_id: str
    attempt: int
    token: str


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    is_admin: bool
    created_at: float
    revoked_at: float | None = None
    unlimited: bool = True  # never refused for its balance (keys created without credits)
    share: float = 1.0  # weight in fair share across keys
    max_priority: int = 1  # highest priority class it may ask for (admin keys: any)
    max_running: int | None = None  # its own cap on PROCESSING jobs; None: the server's
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.revoked_at is None
