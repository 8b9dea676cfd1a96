"""Why a job ended without a video: a code every consumer reads, the message beside it for people.

No module compares message text; dialects map these codes to their own fields (OpenAI's
`error.code`, Segmind's `code` next to `error`), and the playground reads the code too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FailureCode(enum.StrEnum):
    CANCELLED = "cancelled"  # the owner cancelled it (or deleted it while it ran)
    MODERATION = "moderation"  # the content policy blocked the prompt or an input
    MODEL_ERROR = "model_error"  # the backend raised while generating
    WORKER_LOST = "worker_lost"  # every attempt's lease expired (workers died or hung)
    TIMEOUT = "timeout"  # it ran past its job time limit
    INPUT_INVALID = "input_invalid"  # an input failed checks only the worker could make
    MODEL_UNAVAILABLE = "model_unavailable"  # the model could not be loaded on the worker
    MEDIA_ERROR = "media_error"  # encoding or storing the video failed
    STORAGE_FULL = "storage_full"  # no space left to write the video (scratch or storage)
    EXPIRED = "expired"  # no worker claimed it before its start deadline (X-Start-Timeout)
    OUT_OF_MEMORY = "out_of_memory"  # a device (or the host) ran out of memory while it ran


# The message beside `STORAGE_FULL`: it names no path (the worker's log does, for the operator).
STORAGE_FULL_MESSAGE = (
    "storage full: the server had no space left to store the video; retry once the operator "
    "has freed space"
)

# The message beside `CANCELLED`, written by the store (queued job) and the worker (running).
CANCELLED_MESSAGE = "cancelled by the user"


@dataclass(frozen=True)
class Failure:
    """Why a job failed: the code programs read and the message people read."""

    code: FailureCode
    message: str
