"""Read back what a video file really holds, so callers and tests check facts, not intentions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import av.error


@dataclass(frozen=True)
class VideoInfo:
    """The facts of a video's first video stream, as the container and decoder report them."""

    width: int  # coded picture width in pixels
    height: int  # coded picture height in pixels
    fps: float  # average frame rate
    frames: int  # number of frames in the stream
    seconds: float  # stream duration
    codec: str  # FFmpeg codec name, e.g. "h264"
    profile: str | None  # codec profile, e.g. "High"; None when the codec has none
    pix_fmt: str | None  # pixel format, e.g. "yuv420p"
    encoder: str | None = None  # the encoder that wrote it ("libx264", "h264_nvenc"), if ours


def probe_mp4(path: Path) -> VideoInfo:
    """Describe the first video stream of `path`; ValueError when it has none or is unreadable.

    The frame count comes from the container when it records one and from decoding every frame
    otherwise, so the answer is true either way.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video file at {path}")
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            frames = stream.frames or _count_frames(container, stream)
            seconds = _stream_seconds(container, stream, frames, fps)
            return VideoInfo(
                width=ctx.width,
                height=ctx.height,
                fps=fps,
                frames=frames,
                seconds=seconds,
                codec=ctx.name,
                profile=ctx.profile or None,
                pix_fmt=ctx.format.name if ctx.format is not None else None,
            )
    except av.error.FFmpegError as exc:
        raise ValueError(f"{path} is not a readable video: {exc}") from exc


def _count_frames(container: av.container.InputContainer, stream: av.VideoStream) -> int:
    """Decode the stream to count frames when the container does not record how many."""
    container.seek(0)
    return sum(1 for _ in container.decode(stream))


def _stream_seconds(
    container: av.container.InputContainer, stream: av.VideoStream, frames: int, fps: float
) -> float:
    """The stream's own duration, else the container's, else frames over rate."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return frames / fps if fps else 0.0
