"""The job state machine, in one place.

    QUEUED ──claim──► PROCESSING ──complete──► COMPLETED
      ▲                  │  │
      └──lease expired───┘  └──fail / cancel / retries spent──► FAILED
    QUEUED ──cancel / content block──► FAILED

The store builds every transition as one atomic UPDATE whose WHERE clause names the states
`sources(target)` allows, so no code path can move a job along an edge not listed here.
"""

from __future__ import annotations

import enum


class Status(enum.StrEnum):
    QUEUED = "QUEUED"  # accepted and durable, waiting for a worker
    PROCESSING = "PROCESSING"  # claimed by a worker holding a live lease
    COMPLETED = "COMPLETED"  # the video is stored; the result can be read until it expires
    FAILED = "FAILED"  # ended without a video; `error` says why


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED})

# target -> the states a job may be in to move there
_EDGES: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.PROCESSING}),  # lease expired or handed back
    Status.PROCESSING: frozenset({Status.QUEUED}),  # claimed
    Status.COMPLETED: frozenset({Status.PROCESSING}),  # finished by the lease holder
    Status.FAILED: frozenset({Status.QUEUED, Status.PROCESSING}),  # error, cancel, block
}


def sources(target: Status) -> frozenset[Status]:
    """The states from which a job may move to `target`."""
    return _EDGES[target]


def can_move(current: Status, target: Status) -> bool:
    return current in _EDGES[target]


def is_terminal(status: Status) -> bool:
    return status in TERMINAL
