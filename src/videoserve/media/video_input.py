"""Check and decode a caller's video (an edit's or an extension's source, a character's clip).

The container's own claims (duration, frame count, size, frame rate) are never trusted: every
limit is checked against what the decoder actually produces, frame by frame, and decoding stops
at the first limit crossed. The decoder itself is told the pixel cap (FFmpeg's `max_pixels`),
so a frame over it is refused before its picture is allocated, whatever the first frame was.
The frame rate is measured from the decoded timestamps (the median gap, so one odd timestamp
cannot decide it) and capped (`max_fps`); the duration is the time from the first frame's
start to the last frame's end, never count / rate (a sparse variable-rate clip is not
over-counted). What a request keeps decoded (kept frames x width x height x 3 bytes) is checked
against `max_decoded_bytes` before each frame is kept, and `check_decoded_bytes` lets a caller
check what it plans to allocate (an extension's output) the same way.
Only MP4/MOV and WebM/Matroska are opened, recognised from their first
bytes, and the demuxer is named explicitly, so FFmpeg never guesses a format (a playlist
format would make it open URLs). Every failure is a `VideoInputInvalid` whose message names
what was wrong; the API answers it as a 400.

The source's sound (when asked for) is decoded too, to float32 planar mono or stereo at its own
rate through FFmpeg's resampler (a file with more channels is downmixed to stereo: the AAC track
we write has one or two); its length is capped like the pictures'.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import av
import av.error
import numpy as np

from videoserve import errors
from videoserve.settings import Settings

# ISO base media (MP4, MOV) boxes that may open a file; the EBML magic opens WebM/Matroska.
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
MAX_SAMPLE_RATE = 192_000  # the highest rate a real recording uses; more is a hostile header
BYTES_PER_PIXEL = 3  # decoded frames are kept as uint8 RGB


def video_limits(settings: Settings) -> VideoLimits:
    """The limits a `Settings` sets (`max_video_*`)."""
    return VideoLimits(
        max_bytes=settings.max_video_bytes,
        max_seconds=settings.max_video_seconds,
        max_pixels=settings.max_video_pixels,
        max_frames=settings.max_video_frames,
        max_fps=settings.max_video_fps,
        max_decoded_bytes=settings.max_video_decoded_bytes,
    )


class VideoInputInvalid(errors.InvalidRequest):
    """Not a decodable MP4/MOV/WebM within the limits; the message says which part failed."""


@dataclass(frozen=True)
class VideoLimits:
    """Caps on a video input, from the settings (`max_video_*`)."""

    max_bytes: int
    max_seconds: float
    max_pixels: int
    max_frames: int
    max_fps: float = 120.0
    max_decoded_bytes: int = 2 * 1024**3


@dataclass(frozen=True)
class DecodedVideo:
    """What decoding found, and the frames kept (uint8 RGB (T, H, W, 3); maybe none)."""

    width: int  # of the decoded pictures, before any scaling asked for
    height: int
    frames: int  # frames decoded
    fps: float  # frames per second: the median gap between decoded timestamps
    seconds: float  # from the first frame's start to the last frame's end
    kept: np.ndarray  # the frames asked for, at the size asked for
    container: str  # "mp4" or "webm"
    audio: np.ndarray | None = (
        None  # float32 (channels, samples) in [-1, 1], when asked and present
    )
    audio_sample_rate: int | None = None

    @property
    def last_frame(self) -> np.ndarray:
        return self.kept[-1]


def sniff_container(data: bytes) -> str | None:
    """ "mp4" (MP4 or MOV), "webm" (WebM or Matroska), or None for anything else."""
    if data[:4] == _EBML_MAGIC:
        return "webm"
    if len(data) >= 8 and data[4:8] in _ISO_BOXES:
        return "mp4"
    return None


def decode_video(
    data: bytes,
    limits: VideoLimits,
    *,
    what: str = "video",
    keep: Callable[[int], bool] | None = None,
    size: tuple[int, int] | None = None,
    fit: int | None = None,
    audio: bool = False,
) -> DecodedVideo:
    """Decode every frame of `data` within `limits`; keep those `keep(index)` selects.

    `keep` None keeps nothing but the last frame; `size` (width, height) scales kept frames,
    `fit` scales them down so that their longer side is at most `fit` pixels; `audio` also
    decodes the first audio stream, if there is one.
    """
    if not data:
        raise VideoInputInvalid(f"{what}: the file is empty", param=what)
    if len(data) > limits.max_bytes:
        raise errors.PayloadTooLarge(
            f"{what}: the file is {len(data)} bytes, over the limit of {limits.max_bytes}",
            param=what,
        )
    container = sniff_container(data)
    if container is None:
        raise VideoInputInvalid(
            f"{what}: not a video file (MP4, MOV or WebM expected; the bytes are none of them)",
            param=what,
        )
    demuxer = "mov" if container == "mp4" else "matroska"
    try:
        decoded = _decode(data, demuxer, container, limits, what, keep, size, fit)
        if not audio:
            return decoded
        sound = _decode_audio(data, demuxer, limits, what)
        if sound is None:
            return decoded
        return replace(decoded, audio=sound[0], audio_sample_rate=sound[1])
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        if isinstance(exc, errors.VideoserveError):
            raise
        raise VideoInputInvalid(
            f"{what}: the {container.upper()} file could not be decoded ({exc})", param=what
        ) from None


def _decode(
    data: bytes,
    demuxer: str,
    container_name: str,
    limits: VideoLimits,
    what: str,
    keep: Callable[[int], bool] | None,
    size: tuple[int, int] | None,
    fit: int | None,
) -> DecodedVideo:
    kept: list[np.ndarray] = []
    last: av.VideoFrame | None = None
    count = 0
    times: list[float] = []  # the decoded frames' start times, in decoding order
    last_end: float | None = None  # where the latest frame's own duration ends
    earliest, latest = float("inf"), float("-inf")
    width = height = 0
    with av.open(io.BytesIO(data), mode="r", format=demuxer) as container:
        if not container.streams.video:
            raise VideoInputInvalid(f"{what}: the file has no video stream", param=what)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        claimed = (stream.codec_context.width or 0) * (stream.codec_context.height or 0)
        if claimed > limits.max_pixels:
            raise _over_pixels(
                what, stream.codec_context.width, stream.codec_context.height, limits
            )
        # FFmpeg refuses any picture over the cap before allocating it (av_image_check_size2):
        # a clip whose first frame is small and later ones huge stops at the first huge one.
        stream.codec_context.options = {"max_pixels": str(limits.max_pixels)}
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:
                raise _undecodable(what, count, limits, exc) from None
            if frame.width * frame.height > limits.max_pixels:  # a decoder that ignores it
                raise _over_pixels(what, frame.width, frame.height, limits)
            if count == 0:
                width, height = frame.width, frame.height
            count += 1
            if count > limits.max_frames:
                raise VideoInputInvalid(f"{what}: more than {limits.max_frames} frames", param=what)
            if frame.time is not None:
                times.append(frame.time)
                if frame.duration and frame.time_base:
                    last_end = frame.time + float(frame.duration * frame.time_base)
                else:
                    last_end = None
                earliest, latest = min(earliest, frame.time), max(latest, frame.time)
                if latest - earliest > limits.max_seconds:
                    raise VideoInputInvalid(
                        f"{what}: longer than the limit of {limits.max_seconds:g} seconds",
                        param=what,
                    )
            if keep is not None and keep(count - 1):
                scaled = size or _fitted(frame, fit)
                check_decoded_bytes(len(kept) + 1, *_kept_size(frame, scaled), limits, what)
                kept.append(_rgb(frame, scaled))
            last = frame
    if count == 0 or last is None:
        raise VideoInputInvalid(f"{what}: the video stream holds no decodable frame", param=what)
    if not kept:
        kept = [_rgb(last, size or _fitted(last, fit))]
    fps = _measured_fps(times, stream)
    if fps > limits.max_fps:
        raise VideoInputInvalid(
            f"{what}: a frame rate of {fps:.6g} fps (measured from its timestamps) is over the "
            f"limit of {limits.max_fps:g} fps",
            param=what,
        )
    seconds = _duration(times, last_end, fps)
    if seconds > limits.max_seconds + 1e-6:
        raise VideoInputInvalid(
            f"{what}: {seconds:.1f} seconds, over the limit of {limits.max_seconds:g}", param=what
        )
    return DecodedVideo(
        width=width,
        height=height,
        frames=count,
        fps=fps,
        seconds=seconds,
        kept=np.stack(kept),
        container=container_name,
    )


def check_decoded_bytes(
    frames: int, width: int, height: int, limits: VideoLimits, what: str
) -> None:
    """A 400 when `frames` pictures of `width`x`height` (uint8 RGB) would exceed the cap on
    what one request holds decoded; called before allocating them."""
    needed = frames * width * height * BYTES_PER_PIXEL
    if needed > limits.max_decoded_bytes:
        raise VideoInputInvalid(
            f"{what}: {frames} frames of {width}x{height} would take {needed} bytes decoded, "
            f"over the limit of {limits.max_decoded_bytes} bytes per request",
            param=what,
        )


def count_frames(data: bytes, limits: VideoLimits, *, what: str = "video") -> int:
    """How many video packets (one per frame) `data` holds, by demuxing alone: no picture
    is decoded, so it costs a small fraction of a decode. Bounded by `max_frames` + 1."""
    container_name = sniff_container(data)
    if container_name is None:
        return 0  # `decode_video` answers the precise 400
    demuxer = "mov" if container_name == "mp4" else "matroska"
    count = 0
    try:
        with av.open(io.BytesIO(data), mode="r", format=demuxer) as container:
            if not container.streams.video:
                return 0
            for packet in container.demux(container.streams.video[0]):
                if packet.size:
                    count += 1
                if count > limits.max_frames:
                    break
    except (av.error.FFmpegError, ValueError, IndexError):
        return count  # the decode that follows names the failure
    return count


class VideoDecoder:
    """Decodes callers' videos on threads, at most `concurrency` at once in this process.

    Why a bound of our own: a decode is seconds of CPU; unbounded, a burst of uploads would
    hold every thread of the default executor (and all the memory their frames take) while
    the event loop itself stays free."""

    def __init__(self, limits: VideoLimits, concurrency: int) -> None:
        self.limits = limits
        self._slots = asyncio.Semaphore(concurrency)

    async def decode(self, data: bytes, **options: Any) -> DecodedVideo:
        """`decode_video(data, self.limits, **options)` on a thread, within the bound."""
        async with self._slots:
            return await asyncio.to_thread(decode_video, data, self.limits, **options)

    async def count_frames(self, data: bytes, *, what: str = "video") -> int:
        async with self._slots:
            return await asyncio.to_thread(count_frames, data, self.limits, what=what)


def _over_pixels(what: str, width: int, height: int, limits: VideoLimits) -> VideoInputInvalid:
    return VideoInputInvalid(
        f"{what}: frames of {width}x{height} are over the limit of {limits.max_pixels} pixels",
        param=what,
    )


def _undecodable(
    what: str, decoded: int, limits: VideoLimits, exc: av.error.FFmpegError
) -> VideoInputInvalid:
    """A decoder error after `decoded` good frames. FFmpeg answers a picture over its
    `max_pixels` with EINVAL, the code of any invalid packet, so the message names both."""
    if isinstance(exc, av.error.ArgumentError):
        return VideoInputInvalid(
            f"{what}: decoding stopped at frame {decoded + 1}: its picture is over the limit "
            f"of {limits.max_pixels} pixels (width x height) or is not valid",
            param=what,
        )
    return VideoInputInvalid(
        f"{what}: frame {decoded + 1} could not be decoded ({exc})", param=what
    )


def _decode_audio(
    data: bytes, demuxer: str, limits: VideoLimits, what: str
) -> tuple[np.ndarray, int] | None:
    """The first audio stream as float32 (channels, samples) and its rate; None if it has none.

    A stream that is there but yields no samples counts as none: a silent source.
    """
    with av.open(io.BytesIO(data), mode="r", format=demuxer) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or 0)
        if not 0 < rate <= MAX_SAMPLE_RATE:
            raise VideoInputInvalid(
                f"{what}: the audio stream's sample rate ({rate} Hz) is not one of 1 to "
                f"{MAX_SAMPLE_RATE} Hz",
                param=what,
            )
        layout = "mono" if stream.codec_context.channels == 1 else "stereo"
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        cap = int((limits.max_seconds + 1) * rate)  # a second of slack: encoder padding
        chunks: list[np.ndarray] = []
        samples = 0
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
                samples += chunks[-1].shape[1]
            if samples > cap:
                raise VideoInputInvalid(
                    f"{what}: its audio is longer than the limit of {limits.max_seconds:g} seconds",
                    param=what,
                )
        chunks.extend(out.to_ndarray() for out in resampler.resample(None))
    if not chunks:
        return None
    wave = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    if not np.isfinite(wave).all():
        raise VideoInputInvalid(f"{what}: its audio decodes to non-finite samples", param=what)
    return np.clip(wave, -1.0, 1.0), rate


def resample_audio(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """`wave` (channels, samples) at `rate` as float32 at `target`, through FFmpeg's resampler
    (band-limited, unlike interpolating in numpy, so a 48 kHz source keeps no aliasing at 24)."""
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if rate == target or wave.shape[1] == 0:
        return wave
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=target)
    frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout=layout)
    frame.sample_rate = rate
    chunks = [out.to_ndarray() for out in resampler.resample(frame)]
    chunks += [out.to_ndarray() for out in resampler.resample(None)]
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False)


def _rgb(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")
    return frame.to_ndarray(format="rgb24", width=size[0], height=size[1])


def _fitted(frame: av.VideoFrame, side: int | None) -> tuple[int, int] | None:
    """The size that scales `frame` down to a longer side of `side`; None: as it is."""
    if side is None or max(frame.width, frame.height) <= side:
        return None
    scale = side / max(frame.width, frame.height)
    return max(1, round(frame.width * scale)), max(1, round(frame.height * scale))


def _kept_size(frame: av.VideoFrame, size: tuple[int, int] | None) -> tuple[int, int]:
    return size if size is not None else (frame.width, frame.height)


def _measured_fps(times: list[float], stream: av.VideoStream) -> float:
    """Frames per second: one over the median gap between consecutive decoded timestamps
    (robust to one odd timestamp); the stream's rate for a single frame, else 24."""
    ordered = sorted(set(times))
    gaps = [b - a for a, b in itertools.pairwise(ordered) if b > a]
    if gaps:
        return 1.0 / statistics.median(gaps)
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 24.0


def _duration(times: list[float], last_end: float | None, fps: float) -> float:
    """From the first frame's start to the last frame's end: the last frame lasts its own
    duration where the file gives one (at most a median gap), else one median gap."""
    step = 1.0 / fps
    if not times:
        return step
    tail = step if last_end is None else min(max(last_end - times[-1], 0.0), step)
    if tail == 0.0:
        tail = step
    return max(times) - min(times) + tail


def evenly_spaced(total: int, wanted: int) -> Callable[[int], bool]:
    """A `keep` selecting `wanted` frame indexes spread over `total` frames."""
    if total <= wanted:
        return lambda index: True
    chosen = {round(i * (total - 1) / max(wanted - 1, 1)) for i in range(wanted)}
    return chosen.__contains__
