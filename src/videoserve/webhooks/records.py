"""Immutable records read from the webhook tables."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for its next attempt at next_attempt_at
    SENDING = "sending"  # claimed; next_attempt_at is the lease expiry
    SUCCEEDED = "succeeded"  # a 2xx answer
    FAILED = "failed"  # the retry period ran out
    CANCELLED = "cancelled"  # its endpoint was deleted


@dataclass(frozen=True)
class Endpoint:
    """A per-key subscription."""

    id: str
    api_key_id: str
    url: str
    events: tuple[str, ...]
    created_at: float


@dataclass(frozen=True)
class Delivery:
    """A claimed delivery: what one attempt needs, and the lease that fences its result."""

    id: str
    event_id: str
    event_type: str
    job_id: str
    api_key_id: str
    endpoint_id: str | None
    url: str
    payload: str
    attempt: int  # this attempt's number, 1 for the first
    lease_token: str
    deadline_at: float


@dataclass(frozen=True)
class AttemptResult:
    """What one HTTP attempt came to."""

    started_at: float
    finished_at: float
    status_code: int | None = None  # None: no answer (refused, timeout, connection error)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class Attempt:
    """One row of the delivery log."""

    id: str
    delivery_id: str
    event_id: str
    event_type: str
    job_id: str
    endpoint_id: str | None
    url: str
    attempt: int
    status_code: int | None
    error: str | None
    started_at: float
    finished_at: float
    delivery_status: str
