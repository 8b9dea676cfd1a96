"""A spritesheet: one JPEG grid of evenly spaced frames, the preview OpenAI's API offers.

Built from the stored MP4 (not from the model's frames) so it can be made on first request
for any finished video, whoever produced it, and cached next to it.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import av
import av.error
from PIL import Image

MAX_FRAMES = 16
COLUMNS = 4
TILE_MAX_SIDE = 256  # a tile's long side: small enough that 16 of them stay a light download


def frame_indices(total: int, wanted: int) -> list[int]:
    """`wanted` indices spread evenly over `total` frames, first and last included."""
    if total <= 0 or wanted <= 0:
        return []
    if wanted >= total:
        return list(range(total))
    if wanted == 1:
        return [0]
    return sorted({round(i * (total - 1) / (wanted - 1)) for i in range(wanted)})


def build_spritesheet(
    video: Path | bytes,
    *,
    max_frames: int = MAX_FRAMES,
    columns: int = COLUMNS,
    tile_max_side: int = TILE_MAX_SIDE,
) -> bytes:
    """JPEG bytes of up to `max_frames` frames of `video` (a path or MP4 bytes), in rows of
    `columns` tiles, left to right, top to bottom; ValueError for an unreadable video."""
    frames = _sample_frames(video, max_frames)
    if not frames:
        raise ValueError("the video has no frames to make a spritesheet from")
    width, height = frames[0].size
    scale = min(1.0, tile_max_side / max(width, height))
    tile = (max(1, round(width * scale)), max(1, round(height * scale)))
    cols = min(columns, len(frames))
    rows = math.ceil(len(frames) / cols)
    sheet = Image.new("RGB", (tile[0] * cols, tile[1] * rows))
    for i, frame in enumerate(frames):
        if frame.size != tile:
            frame = frame.resize(tile, Image.Resampling.LANCZOS)
        sheet.paste(frame, ((i % cols) * tile[0], (i // cols) * tile[1]))
    buffer = io.BytesIO()
    sheet.save(buffer, format="JPEG", quality=85, optimize=True)
    return buffer.getvalue()


def _sample_frames(video: Path | bytes, wanted: int) -> list[Image.Image]:
    source = io.BytesIO(video) if isinstance(video, bytes) else str(video)
    try:
        with av.open(source, mode="r") as container:
            if not container.streams.video:
                raise ValueError("the file has no video stream")
            stream = container.streams.video[0]
            total = stream.frames or _count_frames(container, stream)
            keep = set(frame_indices(total, wanted))
            container.seek(0)
            picked = []
            # Decoding in order is cheaper than seeking to each index for the short clips we
            # serve, and exact: seeking lands on keyframes.
            for index, frame in enumerate(container.decode(stream)):
                if index in keep:
                    picked.append(frame.to_image())
                    if len(picked) == len(keep):
                        break
            return picked
    except av.error.FFmpegError as exc:
        raise ValueError(f"not a readable video: {exc}") from exc


def _count_frames(container: av.container.InputContainer, stream: av.VideoStream) -> int:
    container.seek(0)
    return sum(1 for _ in container.decode(stream))
