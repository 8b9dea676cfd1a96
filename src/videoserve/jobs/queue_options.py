"""A submit's queue options: one record from the HTTP headers down to the job service.

Why a record: the submit routes, the job service and the video operations (extend, edit,
remix) all pass the same three values on; as keyword arguments they were copied through
eight signatures."""

from __future__ import annotations

from dataclasses import dataclass

from videoserve.jobs.fairness import Priority


@dataclass(frozen=True)
class QueueOptions:
    """How a job queues and runs (None: the default of each)."""

    start_timeout: float | None = None  # X-Start-Timeout: else the server's default
    priority: Priority | None = None  # X-Queue-Priority: else normal
    execution_timeout: float | None = None  # X-Execution-Timeout: else the model's limit


DEFAULTS = QueueOptions()
