"""`/v1/videos` response bodies, field for field as the official `openai` package's
`types/video.py` reads them (unix-second times, `seconds` as a string)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from videoserve.api.schemas.segmind import QueuePriority, RequestPhase


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class VideoError(_Open):
    code: str
    message: str


class VideoMetrics(_Open):
    """How a completed video ran (videoserve's extra)."""

    parallel: dict[str, int] | None = Field(
        default=None,
        description='How a worker group split it, e.g. {"ranks": 2, "ulysses": 2}; null: one '
        "device",
    )


class Video(_Open):
    id: str
    object: Literal["video"]
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int = Field(description="0-100")
    prompt: str | None
    seconds: str | None
    size: str | None
    created_at: int | None
    completed_at: int | None
    expires_at: int | None
    error: VideoError | None
    remixed_from_video_id: str | None
    # videoserve's extras (the SDK keeps them in `model_extra`): its queue priority class
    priority: QueuePriority | None = Field(
        default=None, description="Its queue priority class (X-Queue-Priority)"
    )
    # ... and what it is doing now
    phase: RequestPhase | None = Field(
        default=None, description="What it is doing now (docs/api.md, phases and previews)"
    )
    step: int | None = Field(default=None, description="Denoising steps done, while denoising")
    steps: int | None = Field(default=None, description="Denoising steps in all")
    preview_step: int | None = Field(
        default=None, description="The step of its latest preview (content?variant=preview)"
    )
    # ... while queued (GET /v1/videos/{id}; docs/api.md, honest waiting)
    queue_position: int | None = Field(default=None, description="While queued; 1 is next")
    estimated_start_seconds: float | None = Field(
        default=None,
        description="While queued: about how many seconds until it starts, from its model's "
        "recent job times and live workers; null when unknown",
    )
    waiting_reason: str | None = Field(
        default=None,
        description="While queued, when no live worker serves its model: why it waits",
    )
    # ... and once completed
    has_audio: bool | None = Field(default=None, description="Whether the MP4 has a sound track")
    audio_sample_rate: int | None = Field(default=None, description="Hz, when it has sound")
    audio_codec: str | None = Field(default=None, description='"aac", when it has sound')
    metrics: VideoMetrics | None = Field(default=None, description="How it ran")


class VideoList(_Open):
    object: Literal["list"]
    data: list[Video]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(_Open):
    id: str
    object: Literal["video.deleted"]
    deleted: bool
