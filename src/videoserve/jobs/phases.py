"""What a job is doing now (its phase), and how far along the whole job is (its progress).

A PROCESSING job passes through these phases in order, each written by the worker with its
heartbeat: `loading_model` (only when its model was not loaded), `encoding_prompt` (the
pipeline's text encoders and latent set-up, up to the first denoising step), `denoising`
(with `step` of `steps`), `decoding` (the VAE, after the last step), `encoding_video` (the MP4)
and `storing` (the upload). A QUEUED job is `queued`; an ended one `completed` or `failed`.

`progress` (0-100) covers the whole job, not just the steps: each phase owns a share of it
(`SHARES`, a documented default: what a denoising step costs against the rest on the models we
serve, where the steps dominate), denoising advances through its share step by step, and a
job reaches 100 only when it is COMPLETED (99 at most before). It never goes backwards within
an attempt.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    QUEUED = "queued"  # waiting for a worker
    STARTING = "starting"  # claimed; its worker has not reported yet
    LOADING_MODEL = "loading_model"  # its model's weights are being loaded
    ENCODING_PROMPT = "encoding_prompt"  # text encoders and set-up, before the first step
    DENOISING = "denoising"  # `step` of `steps` done
    DECODING = "decoding"  # the VAE decode after the last step
    ENCODING_VIDEO = "encoding_video"  # frames to H.264 (and AAC)
    STORING = "storing"  # the files to storage, the result to the database
    COMPLETED = "completed"
    FAILED = "failed"


# Each running phase's share of `progress`, in order; they sum to 99 (100 is COMPLETED's).
SHARES: dict[Phase, int] = {
    Phase.LOADING_MODEL: 5,
    Phase.ENCODING_PROMPT: 4,
    Phase.DENOISING: 80,
    Phase.DECODING: 6,
    Phase.ENCODING_VIDEO: 3,
    Phase.STORING: 1,
}
_STARTS: dict[Phase, int] = {}
_total = 0
for _phase, _share in SHARES.items():
    _STARTS[_phase] = _total
    _total += _share
MAX_RUNNING_PROGRESS = _total  # 99
RUNNING = tuple(SHARES)
_PHASES = {phase.value: phase for phase in Phase}


def progress(phase: Phase, step: int = 0, steps: int = 0) -> int:
    """The whole job's progress (0-99) at the start of `phase`, or `step` of `steps` into
    denoising."""
    start = _STARTS.get(phase, 0)
    if phase == Phase.DENOISING and steps > 0:
        start += SHARES[Phase.DENOISING] * min(step, steps) // steps
    return min(start, MAX_RUNNING_PROGRESS)


def parse(value: str | None) -> Phase | None:
    """The phase a column holds; None for none (or for a value this version does not know)."""
    return _PHASES.get(value) if value is not None else None


def shown(status: str, phase: str | None) -> str:
    """The phase a view shows for a job in `status` (a `Status` value) whose row says `phase`."""
    if status == "QUEUED":
        return Phase.QUEUED.value
    if status == "COMPLETED":
        return Phase.COMPLETED.value
    if status == "FAILED":
        return Phase.FAILED.value
    return phase or Phase.STARTING.value


def live_fields(
    status: str, phase: str | None, step: int | None, steps: int | None, preview_step: int | None
) -> dict[str, object]:
    """The live fields of a status body: `phase`, and while denoising `step` of `steps`, and
    `preview_step` once a running job has a preview."""
    fields: dict[str, object] = {}
    add_live_fields(fields, status, phase, step, steps, preview_step)
    return fields


def add_live_fields(
    body: dict[str, object],
    status: str,
    phase: str | None,
    step: int | None,
    steps: int | None,
    preview_step: int | None,
) -> None:
    """`live_fields` written into `body` (the status poll's: no dict built and merged)."""
    body["phase"] = shown(status, phase)
    if status == "PROCESSING":
        if phase == Phase.DENOISING.value and step is not None:
            body["step"], body["steps"] = step, steps
        if preview_step is not None:
            body["preview_step"] = preview_step
