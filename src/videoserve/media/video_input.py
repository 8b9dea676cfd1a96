"""Check and decode a caller's video (an edit's or an extension's source, a character's clip).

The container's own claims (duration, frame count, size) are never trusted: every limit is
checked against what the decoder actually produces, frame by frame, and decoding stops at the
first limit crossed. Only MP4/MOV and WebM/Matroska are opened, recognised from their first
bytes, and the demuxer is named explicitly, so FFmpeg never guesses a format (a playlist
format would make it open URLs). Every failure is a `VideoInputInvalid` whose message names
what was wrong; the API answers it as a 400.

The source's sound (when asked for) is decoded too, to float32 planar mono or stereo at its own
rate through FFmpeg's resampler (a file with more channels is downmixed to stereo: the AAC track
we write has one or two); its length is capped like the pictures'.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import av
import av.error
import numpy as np

from videoserve import errors

# ISO base media (MP4, MOV) boxes that may open a file; the EBML magic opens WebM/Matroska.
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
MAX_SAMPLE_RATE = 192_000  # the highest rate a real recording uses; more is a hostile header


def video_limits(settings: Any) -> VideoLimits:
    """The limits a `Settings` sets (`max_video_*`)."""
    return VideoLimits(
        max_bytes=settings.max_video_bytes,
        max_seconds=settings.max_video_seconds,
        max_pixels=settings.max_video_pixels,
        max_frames=settings.max_video_frames,
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


@dataclass(frozen=True)
class DecodedVideo:
    """What decoding found, and the frames kept (uint8 RGB (T, H, W, 3); maybe none)."""

    width: int  # of the decoded pictures, before any scaling asked for
    height: int
    frames: int  # frames decoded
    fps: float  # frames per second measured from the decoded timestamps
    seconds: float  # frames / fps
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
    audio: bool = False,
) -> DecodedVideo:
    """Decode every frame of `data` within `limits`; keep those `keep(index)` selects.

    `keep` None keeps nothing but the last frame; `size` (width, height) scales kept frames;
    `audio` also decodes the first audio stream, if there is one.
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
        decoded = _decode(data, demuxer, container, limits, what, keep, size)
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
) -> DecodedVideo:
    kept: list[np.ndarray] = []
    last: np.ndarray | None = None
    count = 0
    first_time: float | None = None
    last_time = 0.0
    width = height = 0
    with av.open(io.BytesIO(data), mode="r", format=demuxer) as container:
        if not container.streams.video:
            raise VideoInputInvalid(f"{what}: the file has no video stream", param=what)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if count == 0:
                width, height = frame.width, frame.height
                if width * height > limits.max_pixels:
                    raise VideoInputInvalid(
                        f"{what}: frames of {width}x{height} are over the limit of "
                        f"{limits.max_pixels} pixels",
                        param=what,
                    )
            count += 1
            if count > limits.max_frames:
                raise VideoInputInvalid(f"{what}: more than {limits.max_frames} frames", param=what)
            if frame.time is not None:
                first_time = frame.time if first_time is None else first_time
                last_time = frame.time
                if last_time - first_time > limits.max_seconds:
                    raise VideoInputInvalid(
                        f"{what}: longer than the limit of {limits.max_seconds:g} seconds",
                        param=what,
                    )
            picture = _rgb(frame, size)
            if keep is not None and keep(count - 1):
                kept.append(picture)
            last = picture
    if count == 0 or last is None:
        raise VideoInputInvalid(f"{what}: the video stream holds no decodable frame", param=what)
    if not kept or (keep is None):
        kept = [last]
    fps = _measured_fps(count, first_time, last_time, stream)
    seconds = count / fps
    if seconds > limits.max_seconds:
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


def _measured_fps(count: int, first: float | None, last: float, stream: av.VideoStream) -> float:
    """Frames per second from the decoded timestamps; the stream's rate for one frame."""
    if count > 1 and first is not None and last > first:
        return (count - 1) / (last - first)
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 24.0


def evenly_spaced(total: int, wanted: int) -> Callable[[int], bool]:
    """A `keep` selecting `wanted` frame indexes spread over `total` frames."""
    if total <= wanted:
        return lambda index: True
    chosen = {round(i * (total - 1) / max(wanted - 1, 1)) for i in range(wanted)}
    return chosen.__contains__
