"""A job's inputs beyond its parameters: what it does with them and where their bytes are.

Images, videos and characters' reference frames are the same kind of thing to the job domain:
a typed `JobInput` naming a blob under the job's prefix, so they share the job's retention and
its DELETE. The list and the job's operation (generate, extend, edit) are one small JSON
manifest, `jobs/<id>/inputs.json`, that the job's `input_key` points at.

Why a manifest blob rather than a column: the job's params are re-validated against the
model's schema by the worker, so they cannot carry it, and a new column would need a
migration while the database seam is being reworked (issue 11). The manifest lives and dies
with the job's other files, exactly as the remix marker does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Operation(StrEnum):
    """What the worker does with a job's inputs."""

    GENERATE = "generate"  # text (and maybe an image) to video
    EXTEND = "extend"  # continue `source` from its last frame, one stitched video
    EDIT = "edit"  # video-to-video on `source`, same duration and aspect


class InputKind(StrEnum):
    IMAGE = "image"  # first frame / visual guide
    VIDEO = "video"  # the source of an edit or an extension
    REFERENCE = "reference"  # a character's reference frame


@dataclass(frozen=True)
class JobInput:
    """One input file of a job."""

    kind: InputKind
    key: str  # blob key, under the job's prefix
    content_type: str
    character_id: str | None = None  # for a reference frame: whose


@dataclass(frozen=True)
class JobInputs:
    """The manifest: the operation and every input file, plus what views need to know."""

    operation: Operation
    inputs: tuple[JobInput, ...] = ()
    source_video_id: str | None = None  # the caller's video it started from, if any
    source_seconds: float | None = None  # decoded duration of the source video
    strength: float | None = None  # edits: how far the result may move from the source
    characters: tuple[str, ...] = field(default=())  # ids of the characters used

    def first(self, kind: InputKind) -> JobInput | None:
        return next((i for i in self.inputs if i.kind == kind), None)

    def of_kind(self, kind: InputKind) -> tuple[JobInput, ...]:
        return tuple(i for i in self.inputs if i.kind == kind)

    def total_seconds(self, seconds: float) -> float:
        """The delivered duration for `seconds` of new video: an extension adds the source."""
        if self.operation == Operation.EXTEND and self.source_seconds is not None:
            return self.source_seconds + seconds
        if self.operation == Operation.EDIT and self.source_seconds is not None:
            return self.source_seconds
        return seconds

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> JobInputs:
        raw: dict[str, Any] = json.loads(data)
        return cls(
            operation=Operation(raw["operation"]),
            inputs=tuple(
                JobInput(
                    kind=InputKind(i["kind"]),
                    key=i["key"],
                    content_type=i["content_type"],
                    character_id=i.get("character_id"),
                )
                for i in raw.get("inputs", ())
            ),
            source_video_id=raw.get("source_video_id"),
            source_seconds=raw.get("source_seconds"),
            strength=raw.get("strength"),
            characters=tuple(raw.get("characters", ())),
        )


MANIFEST_NAME = "inputs.json"


def manifest_key(job_prefix: str) -> str:
    return job_prefix + MANIFEST_NAME


def is_manifest(input_key: str | None) -> bool:
    """Whether a job's `input_key` names a manifest (else it is the reference image itself)."""
    return bool(input_key) and str(input_key).endswith("/" + MANIFEST_NAME)


@dataclass(frozen=True)
class PendingInput:
    """An input file a submit stores under the new job's prefix."""

    kind: InputKind
    name: str  # file name under `jobs/<id>/inputs/`
    data: bytes
    content_type: str
    character_id: str | None = None
