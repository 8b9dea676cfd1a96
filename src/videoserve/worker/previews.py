"""A running job's previews: the frames a backend offers become a JPEG strip in storage.

The backend calls `offer` from the model's thread after a denoising step (see
`models.previews.StepPreviews`); the strip is made there (a few milliseconds) and stored from
the event loop, one upload at a time: a preview offered while the last one is still being
stored replaces any waiting one, so a slow store costs previews, never steps. Once stored, the
attempt's next heartbeat records its step, which is what tells readers there is one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import numpy as np

from videoserve.models import previews
from videoserve.services.jobs import preview_key
from videoserve.storage.base import BlobStore
from videoserve.worker.attempt import Signals

log = logging.getLogger("videoserve.worker")


@dataclass
class JobPreviews:
    """The `PreviewSink` of one job's model call."""

    job_id: str
    blobs: BlobStore
    signals: Signals
    loop: asyncio.AbstractEventLoop
    every: int = 0  # steps between previews; 0: by `seconds`
    seconds: float = previews.PREVIEW_SECONDS
    _waiting: tuple[int, bytes] | None = field(default=None, init=False)
    _storing: bool = field(default=False, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)  # kept: not collected

    _ended: bool = field(default=False, init=False)

    def offer(self, step: int, total: int, frames: np.ndarray) -> None:
        image = previews.strip(frames)
        self.loop.call_soon_threadsafe(self._queue, step, image)

    async def end(self) -> None:
        """The job has ended (or gone back to the queue): store no more, delete the last."""
        self._ended, self._waiting = True, None
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self.signals.preview_step is not None:
            await self.blobs.delete_prefix(preview_key(self.job_id))

    def _queue(self, step: int, image: bytes) -> None:
        if self._ended:
            return
        self._waiting = (step, image)
        if not self._storing:
            self._storing = True
            self._task = self.loop.create_task(self._store(), name=f"preview-{self.job_id}")

    async def _store(self) -> None:
        try:
            while self._waiting is not None:
                step, image = self._waiting
                self._waiting = None
                try:
                    await self.blobs.put_bytes(preview_key(self.job_id), image, "image/jpeg")
                except Exception as exc:  # a preview is a courtesy: the job goes on
                    log.warning("job %s: preview not stored: %s", self.job_id, exc)
                    continue
                self.signals.previewed(step)
        finally:
            self._storing = False
