"""Response bodies outside `/v1/videos`: the Segmind contract and videoserve's own routes.

Each model lists the fields the route always or sometimes writes; `extra="allow"` where a
model or a later feature adds fields (a model's extras on the final body, for example), so
a new field is not a contract break but a declared one is checked.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RequestStatus = Literal["QUEUED", "PROCESSING", "COMPLETED", "FAILED"]
# X-Queue-Priority's classes (`jobs.fairness.Priority`).
QueuePriority = Literal["low", "normal", "high"]
# `jobs.phases.Phase`: what a request is doing now (docs/api.md, "Phases and previews").
RequestPhase = Literal[
    "queued",
    "starting",
    "loading_model",
    "encoding_prompt",
    "denoising",
    "decoding",
    "encoding_video",
    "storing",
    "completed",
    "failed",
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Submitted(_Open):
    """`POST /v2/{model}`: accepted and durable; both URLs are absolute (the SDK GETs them)."""

    request_id: str
    status: RequestStatus
    status_url: str
    response_url: str


class RequestStatusBody(_Open):
    """A poll's answer; FAILED comes as HTTP 422 with `error` (and `code`)."""

    request_id: str
    status: RequestStatus
    model: str
    priority: QueuePriority = Field(
        description="Its queue priority class (X-Queue-Priority; normal unless asked)"
    )
    created_at: str | None = Field(description="ISO 8601, UTC")
    started_at: str | None
    completed_at: str | None
    expires_at: str | None = None
    queue_position: int | None = Field(default=None, description="While QUEUED; 1 is next")
    estimated_start_seconds: float | None = Field(
        default=None,
        description="While QUEUED: about how many seconds until it starts, from its model's "
        "recent job times and live workers; null when unknown",
    )
    waiting_reason: str | None = Field(
        default=None,
        description="While QUEUED, when no live worker serves its model: why it waits",
    )
    progress: int | None = Field(
        default=None, description="0-100 over the whole job; 100 only once COMPLETED"
    )
    phase: RequestPhase | None = Field(default=None, description="What it is doing now")
    step: int | None = Field(default=None, description="Denoising steps done, while denoising")
    steps: int | None = Field(default=None, description="Denoising steps in all")
    preview_step: int | None = Field(
        default=None, description="The step of its latest preview (GET .../preview)"
    )
    error: str | None = Field(default=None, description="Why it FAILED")
    code: str | None = Field(default=None, description="The failure code, when FAILED")


class Metrics(_Open):
    """Where a request's wall time went: queued, loading its model (0 when it was loaded),
    in the model, encoding, storing; `total_time` is from submit to completion."""

    queue_time: float
    load_time: float | None = None
    inference_time: float | None
    encode_time: float | None
    store_time: float | None = None
    total_time: float
    parallel: dict[str, int] | None = Field(
        default=None,
        description='How a worker group split it, e.g. {"ranks": 2, "ulysses": 2}; null: one '
        "device",
    )


class RequestResult(RequestStatusBody):
    """`GET /v2/requests/{id}`: the status plus, once COMPLETED, the output and its facts."""

    params: dict[str, Any]
    output: str | None = Field(default=None, description="Signed URL of the MP4")
    thumbnail: str | None = Field(default=None, description="Signed URL of a JPEG")
    served_by: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    frames: int | None = None
    seconds: float | None = None
    has_audio: bool | None = Field(default=None, description="Whether the MP4 has a sound track")
    audio_sample_rate: int | None = Field(default=None, description="Hz, when it has sound")
    audio_codec: str | None = Field(default=None, description='"aac", when it has sound')
    seed: int | None = None
    segments: int | None = None
    metrics: Metrics | None = None


class CancelOutcome(RequestStatusBody):
    cancelled: bool = Field(description="Whether this call stopped (or will stop) the request")
    message: str


class Model(_Open):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    backend: str | None
    alias_of: str | None
    served_by: str
    available: bool
    reason: str | None = Field(description="Why it cannot run here, when unavailable")
    warning: str | None
    parameters: dict[str, Any] = Field(description="The model's parameter JSON Schema")


class ModelList(_Open):
    object: Literal["list"]
    data: list[Model]


class ModelLoad(BaseModel):
    model: str
    load_seconds: float = Field(description="How long loading took (or failing to load)")
    preloaded: bool = Field(description="Loaded at startup (VIDEOSERVE_PRELOAD), not on a job")
    error: str | None = Field(description="Why it failed to load; null when it is loaded")


class Health(BaseModel):
    status: str
    error: str | None = None
    models_loaded: list[ModelLoad] | None = Field(
        default=None,
        description="The embedded worker's models in memory now, each with its latest load "
        "(absent without one)",
    )
    models_failed: list[ModelLoad] | None = None


class Account(_Open):
    id: str
    object: Literal["account"]
    name: str
    credits: float | None = Field(description="Balance; null when unlimited")
    unlimited: bool
    granted: float
    spent: float
    refunded: float


class UsageRecord(_Open):
    id: str
    object: Literal["request"]
    key_id: str | None
    model: str
    served_by: str | None
    status: RequestStatus
    parameters: dict[str, Any]
    cost: float | None
    refunded: float
    attempts: int
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    expires_at: str | None
    queue_time: float | None
    inference_time: float | None
    has_audio: bool | None = Field(default=None, description="Whether the MP4 has a sound track")
    audio_sample_rate: int | None = Field(default=None, description="Hz, when it has sound")
    audio_codec: str | None = Field(default=None, description='"aac", when it has sound')
    total_time: float | None
    error: str | None


class UsagePage(_Open):
    object: Literal["list"]
    data: list[UsageRecord]
    has_more: bool
    last_id: str | None


class LiveWorker(_Open):
    id: str
    host: str
    models: list[str]
    concurrency: int
    current_jobs: list[str] | int
    draining: bool
    ready: bool = Field(description="False while it loads its models; it claims nothing")
    loaded_models: list[ModelLoad] = Field(
        description="Its models in memory now (a model unloaded to make room for another is "
        "left out until a job loads it again), and those that failed to load"
    )
    started_at: str
    last_heartbeat: str


class WorkerList(_Open):
    object: Literal["list"]
    data: list[LiveWorker]
    queue: dict[str, int] = Field(description="Jobs per status")


class ModelScaling(_Open):
    model: str = Field(description="The configured model (after aliases)")
    demand: int = Field(description="Jobs QUEUED for it")
    running: int = Field(description="Jobs PROCESSING on it")
    live_workers: int = Field(description="Live, undrained workers that serve it")
    warm_workers: int = Field(description="Live, undrained workers with it loaded now")
    recent_job_seconds: float | None = Field(
        description="Mean inference + encode seconds of its last 20 completed jobs; null: none"
    )
    oldest_queued_seconds: float | None = Field(
        description="Age of its oldest QUEUED job; null when none"
    )
    desired_workers: int = Field(
        description="ceil(demand x recent_job_seconds / target_wait_seconds) (1 while "
        "recent_job_seconds is null and demand > 0) + ceil(running / slots per live worker); "
        "0 when nothing is queued or running"
    )


class ScalingReport(_Open):
    object: Literal["list"]
    target_wait_seconds: float = Field(description="VIDEOSERVE_TARGET_WAIT_SECONDS")
    data: list[ModelScaling]


class WebhookEndpoint(_Open):
    id: str
    object: Literal["webhook_endpoint"]
    url: str
    events: list[str]
    created_at: int


class WebhookEndpointList(_Open):
    object: Literal["list"]
    data: list[WebhookEndpoint]


class WebhookSecret(BaseModel):
    secret: str


class WebhookAttempt(_Open):
    id: str | int
    object: Literal["webhook_delivery_attempt"]
    event_id: str
    event_type: str
    request_id: str | None
    delivery_id: str | None
    delivery_status: str | None
    endpoint_id: str | None
    url: str
    attempt: int
    success: bool
    status_code: int | None
    error: str | None
    started_at: float
    finished_at: float
    duration_ms: float


class WebhookAttemptList(_Open):
    object: Literal["list"]
    data: list[WebhookAttempt]


class Deleted(_Open):
    id: str
    object: str
    deleted: bool
