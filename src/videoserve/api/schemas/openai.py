"""`/v1/videos` response bodies, field for field as the official `openai` package's
`types/video.py` reads them (unix-second times, `seconds` as a string)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class VideoError(_Open):
    code: str
    message: str


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
