"""Immutable records read from the job database."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from videoserve.jobs.states import Status


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
    result: dict[str, Any] | None = None  # video facts, output key, metrics
    idempotency_key: str | None = None
    request_hash: str | None = None
    webhook_url: str | None = None  # where video.completed / video.failed are delivered
    cost: float | None = None  # credits charged at submit; None when nothing was charged

    @classmethod
    def from_row(cls, row: Any) -> Job:
        # Skip extra RETURNING columns (the `_notify_*` wake-ups a statement carries).
        data = {k: v for k, v in row._mapping.items() if not k.startswith("_")}
        data["status"] = Status(data["status"])
        data["cancel_requested"] = bool(data.get("cancel_requested"))
        return cls(**data)


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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def sound_of(result: dict[str, Any] | None) -> dict[str, Any]:
    """The audio facts of a result as every view shows them; a result from before sound is
    silent (it was)."""
    result = result or {}
    return {
        "has_audio": bool(result.get("has_audio", False)),
        "audio_sample_rate": result.get("audio_sample_rate"),
        "audio_codec": result.get("audio_codec"),
    }
