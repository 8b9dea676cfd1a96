"""Turn model output frames into the files users download: an H.264 MP4 and a JPEG thumbnail.

Both writers go through a temporary sibling and `os.replace`, so anyone reading `path` (the API
serving it, a storage upload) sees the previous file or the complete new one, never a partial one.

The H.264 encoder is libx264 on the CPU, or NVENC on an NVIDIA GPU where PyAV's bundled FFmpeg
has `h264_nvenc` (PyAV 18's does) and a driver is present (`VIDEOSERVE_ENCODER=auto`). NVENC
frees the CPU cores for the next job; any NVENC error falls back to libx264 for that video,
logged once per process, and the result's `encoder` says which one wrote the file.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from videoserve.media.probe import VideoInfo, probe_mp4

log = logging.getLogger("videoserve.media")

# yuv420p with profile High is what every browser and phone plays back; faststart puts the
# index (moov) before the data so playback starts before the download ends.
LIBX264 = "libx264"
NVENC = "h264_nvenc"
ENCODERS = ("auto", LIBX264, NVENC)
_PROFILE = "high"
_PIX_FMT = "yuv420p"
# /dev/nvidiactl exists wherever the NVIDIA driver is loaded: a GPU check without torch.
_NVIDIA_DEVICE = Path("/dev/nvidiactl")
_fallback_logged = False


def nvenc_usable() -> bool:
    """Whether PyAV's FFmpeg has `h264_nvenc` and an NVIDIA driver is present here."""
    return NVENC in av.codecs_available and _NVIDIA_DEVICE.exists()


def choose_encoder(setting: str) -> str:
    """The encoder `VIDEOSERVE_ENCODER` asks for: `auto` is NVENC where usable, else libx264."""
    if setting not in ENCODERS:
        raise ValueError(f"encoder must be one of {', '.join(ENCODERS)} (got {setting!r})")
    if setting == "auto":
        return NVENC if nvenc_usable() else LIBX264
    return setting


def encode_mp4(
    frames: np.ndarray,
    fps: float | Fraction,
    path: Path,
    *,
    preset: str = "veryfast",
    crf: int = 20,
    durable: bool = True,
    encoder: str = LIBX264,
) -> VideoInfo:
    """Encode RGB frames (T, H, W, 3) to an H.264 High yuv420p MP4 at `path` and probe it.

    Frames are uint8, or floats in [0, 1] (clipped, then scaled). yuv420p subsamples chroma in
    2x2 blocks, so an odd width or height is padded by repeating the last column or row: the
    file is then one pixel wider or taller than the frames, and the returned info says so.
    `fps` is turned into an exact rational (denominator at most 1001), so NTSC rates such as
    30000/1001 stay exact and `frames / fps` equals the file's duration. `durable=False`
    skips the fsync (several ms) for a scratch file that something else makes durable.
    `encoder` "h264_nvenc" encodes on the GPU, falling back to libx264 on any error (the
    returned info's `encoder` says which one wrote the file).
    """
    video = _as_uint8_video(frames)
    rate = _frame_rate(fps)
    if isinstance(crf, bool) or not isinstance(crf, numbers.Integral) or not 1 <= crf <= 51:
        # crf 0 is lossless, which x264 only writes in the High 4:4:4 profile browsers lack
        raise ValueError(f"crf must be an integer from 1 to 51, got {crf!r}")
    video = _pad_to_even(video)
    path = Path(path)
    if encoder not in (LIBX264, NVENC):
        raise ValueError(f"encoder must be {LIBX264} or {NVENC} (got {encoder!r})")
    with _atomic_target(path, suffix=".mp4", durable=durable) as tmp:
        used = encoder
        if encoder == NVENC:
            try:
                _write_mp4(tmp, video, rate, encoder=NVENC, options=_nvenc_options(crf))
            except Exception as exc:  # no driver, no GPU, a session limit: the CPU can do it
                _log_fallback(exc)
                used = LIBX264
        if used == LIBX264:
            options = {"preset": preset, "crf": str(crf), "profile": _PROFILE}
            _write_mp4(tmp, video, rate, encoder=LIBX264, options=options)
    return dataclasses.replace(probe_mp4(path), encoder=used)


def _nvenc_options(crf: int) -> dict[str, str]:
    # Constant quality (`cq`) plays the part of x264's crf; p4 is NVENC's balanced preset.
    return {"preset": "p4", "tune": "hq", "rc": "vbr", "cq": str(crf), "profile": _PROFILE}


def _log_fallback(exc: Exception) -> None:
    global _fallback_logged
    if not _fallback_logged:
        _fallback_logged = True
        log.warning(
            "h264_nvenc failed (%s: %s); encoding with libx264 instead (logged once)",
            type(exc).__name__,
            exc,
        )


def _write_mp4(
    path: Path, video: np.ndarray, rate: Fraction, *, encoder: str, options: dict[str, str]
) -> None:
    _, height, width, _ = video.shape
    muxer = {"movflags": "+faststart"}  # a muxer option: it rewrites the finished file
    with av.open(str(path), mode="w", format="mp4", options=muxer) as container:
        stream = container.add_stream(encoder, rate=rate, options=options)
        assert isinstance(stream, av.VideoStream)  # add_stream's return type covers every kind
        stream.width = width
        stream.height = height
        stream.pix_fmt = _PIX_FMT
        for index, pixels in enumerate(video):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush the frames the encoder still holds


def write_thumbnail(
    frame: np.ndarray, path: Path, *, max_side: int = 512, durable: bool = True
) -> tuple[int, int]:
    """Write `frame` (H, W, 3) as a JPEG no larger than `max_side` on its long side; (w, h).

    Small frames are kept at their size: upscaling would only blur a preview.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    pixels = _as_uint8_video(np.asarray(frame)[np.newaxis], what="frame")[0]
    image = Image.fromarray(pixels, mode="RGB")
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    path = Path(path)
    with _atomic_target(path, suffix=".jpg", durable=durable) as tmp:
        image.save(tmp, format="JPEG", quality=85, optimize=True)
    return image.size


def _as_uint8_video(frames: np.ndarray, *, what: str = "frames") -> np.ndarray:
    """Validate the (T, H, W, 3) shape and return contiguous uint8 pixels."""
    array = np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3:
        shape = "(H, W, 3)" if what == "frame" else "(T, H, W, 3)"
        raise ValueError(f"{what} must be RGB with shape {shape}, got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("cannot encode a video with no frames")
    if array.shape[1] == 0 or array.shape[2] == 0:
        raise ValueError(f"{what} have an empty width or height: shape {array.shape}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{what} contain NaN or infinite values")
        return np.ascontiguousarray(np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8))
    raise ValueError(f"{what} must be uint8 or float in [0, 1], got dtype {array.dtype}")


def _frame_rate(fps: float | Fraction) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real):
        raise ValueError(f"fps must be a number, got {fps!r}")
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    exact = Fraction(fps) if isinstance(fps, numbers.Rational) else Fraction(float(fps))
    rate = exact.limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps {fps!r} is too small to encode")
    return rate


def _pad_to_even(video: np.ndarray) -> np.ndarray:
    """Repeat the last row/column where a dimension is odd, as yuv420p requires even sizes."""
    _, height, width, _ = video.shape
    pad_rows, pad_cols = height % 2, width % 2
    if not (pad_rows or pad_cols):
        return video
    return np.pad(video, ((0, 0), (0, pad_rows), (0, pad_cols), (0, 0)), mode="edge")


@contextmanager
def _atomic_target(path: Path, *, suffix: str, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; move it into place on success, remove it on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    """Flush the file to disk so a crash after the rename cannot leave an empty file behind."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
