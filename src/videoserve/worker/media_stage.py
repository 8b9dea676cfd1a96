"""The media stage: the frames a model made become an MP4 and a thumbnail in blob storage.

Everything here is CPU and network work that needs no GPU, which is why the pipelined worker
runs it beside the next job's model. Files go under a key that includes the attempt, so an
attempt that lost its lease can upload but never replace a newer attempt's result.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from videoserve.jobs.failures import STORAGE_FULL_MESSAGE, Failure, FailureCode
from videoserve.jobs.phases import Phase
from videoserve.jobs.records import JobResult, Lease
from videoserve.media.encode import choose_encoder, encode_mp4, write_thumbnail
from videoserve.media.probe import VideoInfo
from videoserve.models.backends.base import GeneratedVideo
from videoserve.services.jobs import job_blob_prefix
from videoserve.settings import Settings
from videoserve.storage.base import BlobStore, out_of_space

log = logging.getLogger("videoserve.worker")


@dataclass(frozen=True)
class ProducedVideo:
    """What the model stage hands the media stage: the frames and how long the model took."""

    video: GeneratedVideo
    inference_time: float
    load_time: float = 0.0  # seconds its model's weights took to load for this job
    parallel: dict[str, int] | None = None  # a worker group's split (`metrics.parallel`)


class MediaStageError(Exception):
    """Encoding or storing the video failed (not the model): the job fails with `failure`,
    `media_error` or `storage_full`, whose message names no server path."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def media_failure(exc: BaseException) -> Failure:
    """What a job fails with when its media stage raised `exc`. No path in the message: it
    is shown to the job's owner, and an `OSError`'s text ends with the file it was about."""
    if out_of_space(exc):
        return Failure(FailureCode.STORAGE_FULL, STORAGE_FULL_MESSAGE)
    if isinstance(exc, OSError) and exc.errno is not None:
        reason = exc.strerror or errno.errorcode.get(exc.errno, str(exc.errno))
        return Failure(FailureCode.MEDIA_ERROR, f"media error: {type(exc).__name__}: {reason}")
    return Failure(FailureCode.MEDIA_ERROR, f"media error: {type(exc).__name__}: {exc}")


class MediaStage:
    def __init__(self, settings: Settings, blobs: BlobStore) -> None:
        self._blobs = blobs
        self._scratch = Path(settings.data_dir) / "tmp"
        self._encoder = choose_encoder(settings.encoder)
        # Thumbnails' fsyncs, beside the encodes (`_encode`); a slot makes one video at a time.
        self._syncer = ThreadPoolExecutor(
            max(1, settings.worker_concurrency), thread_name_prefix="videoserve-fsync"
        )

    async def store(
        self,
        produced: ProducedVideo,
        lease: Lease,
        go_ahead: Callable[[], Awaitable[bool]] | None = None,
        on_phase: Callable[[Phase], None] | None = None,
    ) -> JobResult | None:
        """Encode the MP4 and its thumbnail and store both under the attempt's prefix.

        `go_ahead` (is the attempt still wanted: not cancelled, lease still held?) runs while
        the frames encode, not before: its database round trip was on every job's critical
        path. When it says no, nothing is stored and the answer is None."""
        try:
            return await self._store(produced, lease, go_ahead, on_phase or _ignore)
        except Exception as exc:
            failure = media_failure(exc)
            if failure.code == FailureCode.STORAGE_FULL:
                log.error("job %s: no space left to store its video: %s", lease.job_id, exc)
            # The thumbnail may be stored already (the video's move failed): a failed
            # attempt leaves no files.
            with contextlib.suppress(Exception):
                await self.discard(lease)
            raise MediaStageError(failure) from exc

    async def discard(self, lease: Lease) -> None:
        """Delete an attempt's files: its lease was taken over, so they must not outlive it."""
        await self._blobs.delete_prefix(attempt_prefix(lease))

    async def _store(
        self,
        produced: ProducedVideo,
        lease: Lease,
        go_ahead: Callable[[], Awaitable[bool]] | None,
        on_phase: Callable[[Phase], None],
    ) -> JobResult | None:
        video, blobs = produced.video, self._blobs
        on_phase(Phase.ENCODING_VIDEO)
        self._scratch.mkdir(parents=True, exist_ok=True)
        # Named by the attempt, not in a folder of their own: a scratch folder made and
        # removed per job cost the critical path half a millisecond.
        stem = self._scratch / f"{lease.job_id}.{lease.attempt}"
        video_path, thumb_path = Path(f"{stem}.mp4"), Path(f"{stem}.jpg")
        try:
            # Handed to a thread now, not when a task made of it first runs: the encoder
            # starts before the check-in's database trip, one turn of the loop sooner.
            encoding = asyncio.get_running_loop().run_in_executor(
                None,
                contextvars.copy_context().run,  # the job's log context, as to_thread would
                _encode,
                video,
                video_path,
                thumb_path,
                self._encoder,
                blobs,
                self._syncer,
            )
            if go_ahead is None:
                info, encode_time = await encoding
            else:
                # Both end before the files are touched again, even when one of them fails.
                made, wanted = await asyncio.gather(encoding, go_ahead(), return_exceptions=True)
                for outcome in (made, wanted):
                    if isinstance(outcome, BaseException):
                        raise outcome
                assert not isinstance(made, BaseException)
                info, encode_time = made
                if not wanted:
                    return None
            prefix = attempt_prefix(lease)
            on_phase(Phase.STORING)
            stored_from = time.perf_counter()
            await asyncio.gather(
                blobs.move_file(prefix + "thumbnail.jpg", thumb_path, "image/jpeg", prepared=True),
                blobs.move_file(prefix + "video.mp4", video_path, "video/mp4", prepared=True),
            )
        finally:
            for path in (video_path, thumb_path):  # gone already, unless something failed
                path.unlink(missing_ok=True)
        return JobResult(
            output_key=prefix + "video.mp4",
            thumbnail_key=prefix + "thumbnail.jpg",
            served_by=video.model,
            width=info.width,
            height=info.height,
            fps=info.fps,
            frames=info.frames,
            seconds=info.seconds,
            codec=info.codec,
            encoder=info.encoder,  # libx264, or h264_nvenc where it ran
            has_audio=info.has_audio,
            audio_sample_rate=info.audio_sample_rate,
            audio_codec=info.audio_codec,
            seed=getattr(video, "seed", None),
            segments=getattr(video, "segments", 1),
            load_time=round(produced.load_time, 4),
            inference_time=round(produced.inference_time, 4),
            encode_time=round(encode_time, 4),
            store_time=round(time.perf_counter() - stored_from, 4),
            parallel=produced.parallel,
        )


def _encode(
    video: GeneratedVideo,
    video_path: Path,
    thumb_path: Path,
    encoder: str,
    blobs: BlobStore,
    syncer: Executor,
) -> tuple[VideoInfo, float]:
    """The thumbnail and the MP4, each ready to move into `blobs`, in one trip to a thread;
    and the seconds they took to make (not the MP4's fsync: that is the storage's part).

    The thumbnail's fsync runs on `syncer` while the MP4 encodes, so it is never on the
    job's critical path; the MP4's runs here, so it never waits for the event loop."""
    begun = time.perf_counter()
    write_thumbnail(video.frames[0], thumb_path, durable=False)
    thumb_ready = syncer.submit(blobs.prepare_move, thumb_path)
    try:
        info = encode_mp4(
            video.frames,
            video.fps,
            video_path,
            durable=False,
            encoder=encoder,
            audio=getattr(video, "audio", None),
            sample_rate=getattr(video, "audio_sample_rate", None),
        )
        encode_time = time.perf_counter() - begun
        blobs.prepare_move(video_path)
    finally:
        thumb_ready.result()  # before the caller moves it, or deletes it after a failure
    return info, encode_time


def _ignore(phase: Phase) -> None:
    pass


def attempt_prefix(lease: Lease) -> str:
    return f"{job_blob_prefix(lease.job_id)}{lease.attempt}/"
