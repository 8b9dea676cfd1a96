"""Turn model output frames into the files users download: an H.264 MP4 and a JPEG thumbnail.

A model that makes sound hands a waveform beside the frames: it goes into the same MP4 as an
AAC track (PyAV's bundled `aac` encoder), fitted to the frames' duration (see `fit_audio`).

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
_AUDIO_CODEC = "aac"  # FFmpeg's native AAC-LC encoder, in PyAV's wheel; plays everywhere
_AUDIO_BIT_RATE = 128_000
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
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
) -> VideoInfo:
    """Encode RGB frames (T, H, W, 3) to an H.264 High yuv420p MP4 at `path` and probe it.

    Frames are uint8, or floats in [0, 1] (clipped, then scaled). yuv420p subsamples chroma in
    2x2 blocks, so an odd width or height is padded by repeating the last column or row: the
    file is then one pixel wider or taller than the frames, and the returned info says so.
    `fps` is turned into an exact rational (denominator at most 1001), so NTSC rates such as
    30000/1001 stay exact and `frames / fps` equals the file's duration. `durable=False`
    skips the fsync (several ms) for a scratch file that something else makes durable.
    `audio` (float (channels, samples) in [-1, 1] at `sample_rate`) adds an AAC track of
    exactly the video's duration.
    `encoder` "h264_nvenc" encodes on the GPU, falling back to libx264 on any error (the
    returned info's `encoder` says which one wrote the file).
    """
    video = _as_uint8_video(frames)
    rate = _frame_rate(fps)
    sound = None
    if audio is not None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 8000:
            raise ValueError(f"sample_rate must be an integer >= 8000, got {sample_rate!r}")
        sound = fit_audio(audio, sample_rate, video.shape[0] / rate)
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
                _write_mp4(
                    tmp,
                    video,
                    rate,
                    encoder=NVENC,
                    options=_nvenc_options(crf),
                    sound=sound,
                    sample_rate=sample_rate,
                )
            except Exception as exc:  # no driver, no GPU, a session limit: the CPU can do it
                _log_fallback(exc)
                used = LIBX264
        if used == LIBX264:
            options = {"preset": preset, "crf": str(crf), "profile": _PROFILE}
            _write_mp4(
                tmp,
                video,
                rate,
                encoder=LIBX264,
                options=options,
                sound=sound,
                sample_rate=sample_rate,
            )
    return dataclasses.replace(probe_mp4(path), encoder=used)


def fit_audio(audio: np.ndarray, sample_rate: int, seconds: float | Fraction) -> np.ndarray:
    """The waveform as contiguous float32 (channels, samples), exactly `seconds` long.

    A short waveform is padded with silence at its end, a long one trimmed there: both keep
    the start in sync, and the difference is a model's rounding (LTX-2's audio of 25 frames
    at 24 fps is ~32 ms short, from the pipeline's own latent arithmetic), not content.
    Stretching it instead would shift every sound by up to that much and change its pitch.
    """
    wave = np.asarray(audio)
    if wave.ndim == 1:
        wave = wave[np.newaxis]
    if wave.ndim != 2 or not 1 <= wave.shape[0] <= 2:
        raise ValueError(f"audio must be (channels, samples), 1 or 2 channels: got {wave.shape}")
    if not np.issubdtype(wave.dtype, np.floating) or not np.isfinite(wave).all():
        raise ValueError("audio must be finite floats in [-1, 1]")
    samples = round(seconds * sample_rate)
    wave = np.clip(wave[:, :samples], -1.0, 1.0).astype(np.float32)
    if wave.shape[1] < samples:
        wave = np.pad(wave, ((0, 0), (0, samples - wave.shape[1])))
    return np.ascontiguousarray(wave)


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
    path: Path,
    video: np.ndarray,
    rate: Fraction,
    *,
    encoder: str,
    options: dict[str, str],
    sound: np.ndarray | None = None,
    sample_rate: int | None = None,
) -> None:
    _, height, width, _ = video.shape
    muxer = {"movflags": "+faststart"}  # a muxer option: it rewrites the finished file
    with av.open(str(path), mode="w", format="mp4", options=muxer) as container:
        stream = container.add_stream(encoder, rate=rate, options=options)
        assert isinstance(stream, av.VideoStream)  # add_stream's return type covers every kind
        stream.width = width
        stream.height = height
        stream.pix_fmt = _PIX_FMT
        if encoder == LIBX264:
            # FFmpeg's default (frame and slice threading), which PyAV narrows to slices: x264
            # then splits each frame into slices and waits for all of them before `encode`
            # returns, so our rgb->yuv conversion of the next frame never overlaps the encode,
            # and the slices cost bits (10% larger files). Frame threads pipeline frames, as
            # the ffmpeg CLI does (bench/encode.py measures the two).
            stream.codec_context.thread_type = "AUTO"
        # Every stream exists before the first packet: the header is written then.
        track = None
        if sound is not None and sample_rate is not None:
            track = _AudioTrack(container, sound, sample_rate)
        for index, pixels in enumerate(video):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
            if track is not None:  # keep the two interleaved, about a frame apart
                track.encode_until((index + 1) / rate)
        container.mux(stream.encode(None))  # flush the frames the encoder still holds
        if track is not None:
            track.finish()


class _AudioTrack:
    """An AAC-LC track fed in time order beside the video (planar float, as the encoder takes)."""

    def __init__(
        self, container: av.container.OutputContainer, sound: np.ndarray, sample_rate: int
    ) -> None:
        self.layout = "stereo" if sound.shape[0] == 2 else "mono"
        self.container, self.sound, self.sample_rate = container, sound, sample_rate
        stream = container.add_stream(_AUDIO_CODEC, rate=sample_rate, layout=self.layout)
        assert isinstance(stream, av.AudioStream)  # add_stream's return type covers every kind
        self.stream = stream
        self.stream.bit_rate = _AUDIO_BIT_RATE
        self.frame_size = 1024  # AAC-LC's frame: the encoder takes exactly this many samples
        self.sent = 0

    def encode_until(self, seconds: float | Fraction) -> None:
        goal = min(self.sound.shape[1], round(seconds * self.sample_rate))
        while self.sent < goal:
            chunk = np.ascontiguousarray(self.sound[:, self.sent : self.sent + self.frame_size])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self.layout)
            frame.sample_rate = self.sample_rate
            frame.pts = self.sent
            self.container.mux(self.stream.encode(frame))
            self.sent += chunk.shape[1]

    def finish(self) -> None:
        self.encode_until(Fraction(self.sound.shape[1], self.sample_rate))
        self.container.mux(self.stream.encode(None))


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
