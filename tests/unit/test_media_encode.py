"""Encoded MP4s and thumbnails are what browsers expect, checked by probing the real files."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from videoserve.media import encode, probe


def gradient(frames: int, height: int, width: int) -> np.ndarray:
    """A moving RGB gradient: compressible, but every frame differs."""
    t = np.arange(frames)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    red = (x * 255 // max(width - 1, 1) + t * 7) % 256
    green = (y * 255 // max(height - 1, 1) + t * 3) % 256
    blue = (t * 11 + x + y) % 256
    return np.stack(np.broadcast_arrays(red, green, blue), axis=-1).astype(np.uint8)


@pytest.mark.parametrize(
    ("frames", "height", "width", "fps"),
    [
        (17, 64, 64, 8),
        (9, 48, 80, 16),
        (25, 36, 64, 24),
        (10, 32, 32, 30000 / 1001),
        (5, 33, 47, 12.5),  # odd height and width
        (3, 31, 32, Fraction(24000, 1001)),
        (1, 1, 1, 8),  # a single 1x1 frame pads to 2x2
    ],
)
def test_encode_then_probe(tmp_path: Path, frames: int, height: int, width: int, fps) -> None:
    path = tmp_path / "out.mp4"
    info = encode.encode_mp4(gradient(frames, height, width), fps, path)

    assert info == dataclasses.replace(probe.probe_mp4(path), encoder="libx264")
    assert info.codec == "h264"
    assert info.profile == "High"
    assert info.pix_fmt == "yuv420p"
    assert (info.width, info.height) == (width + width % 2, height + height % 2)
    assert info.frames == frames
    assert info.fps == pytest.approx(float(fps), rel=1e-6)
    assert info.seconds == pytest.approx(frames / float(fps), abs=1 / float(fps))
    assert info.seconds == pytest.approx(info.frames / info.fps, rel=1e-6)


def test_float_frames_are_scaled_from_unit_range(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = rng.random((4, 32, 48, 3), dtype=np.float32)
    frames[0, 0, 0] = [-0.5, 1.5, 0.5]  # out of range: clipped, not wrapped
    info = encode.encode_mp4(frames, 8, tmp_path / "f.mp4")
    assert (info.frames, info.width, info.height) == (4, 48, 32)


def test_odd_sizes_repeat_the_edge(tmp_path: Path) -> None:
    frames = np.zeros((2, 15, 17, 3), dtype=np.uint8)
    frames[:, -1, :, :] = 255  # white last row
    frames[:, :, -1, :] = 255  # white last column
    path = tmp_path / "odd.mp4"
    encode.encode_mp4(frames, 8, path, crf=1, preset="ultrafast")
    with av.open(str(path)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert first.shape == (16, 18, 3)
    # the padding repeats the edge, so it is as white as the edge, not black
    assert first[-1, :, :].mean() > 200
    assert first[:, -1, :].mean() > 200
    assert first[5:10, 5:10].mean() < 30


def test_moov_comes_before_mdat(tmp_path: Path) -> None:
    path = tmp_path / "fast.mp4"
    encode.encode_mp4(gradient(12, 64, 64), 24, path)
    data = path.read_bytes()
    assert b"moov" in data and b"mdat" in data
    assert data.index(b"moov") < data.index(b"mdat")


def test_overwrites_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "video.mp4"
    encode.encode_mp4(gradient(3, 32, 32), 8, path)
    info = encode.encode_mp4(gradient(6, 32, 64), 8, path)
    assert info.frames == 6 and info.width == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.mp4"]


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((0, 16, 16, 3), dtype=np.uint8), "no frames"),
        (np.zeros((16, 16, 3), dtype=np.uint8), "shape"),
        (np.zeros((2, 16, 16, 4), dtype=np.uint8), "shape"),
        (np.zeros((2, 16, 16, 3), dtype=np.int64), "dtype"),
        (np.full((2, 16, 16, 3), np.nan, dtype=np.float32), "NaN"),
    ],
)
def test_bad_frames_raise_and_write_nothing(tmp_path: Path, frames, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode.encode_mp4(frames, 8, tmp_path / "bad.mp4")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fps", [0, -1, float("nan"), float("inf"), "24", True])
def test_bad_fps_is_refused(tmp_path: Path, fps) -> None:
    with pytest.raises(ValueError, match="fps"):
        encode.encode_mp4(gradient(2, 16, 16), fps, tmp_path / "bad.mp4")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("crf", [0, 52, 20.5])
def test_bad_crf_is_refused(tmp_path: Path, crf) -> None:
    with pytest.raises(ValueError, match="crf"):
        encode.encode_mp4(gradient(2, 16, 16), 8, tmp_path / "bad.mp4", crf=crf)
    assert list(tmp_path.iterdir()) == []


def test_encoder_failure_keeps_the_old_file_and_no_partial_one(tmp_path: Path) -> None:
    path = tmp_path / "video.mp4"
    encode.encode_mp4(gradient(3, 32, 32), 8, path)
    before = path.read_bytes()
    with pytest.raises(av.error.FFmpegError):
        encode.encode_mp4(gradient(3, 32, 32), 8, path, preset="no-such-preset")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.mp4"]


@pytest.mark.parametrize(
    ("height", "width", "max_side", "expected"),
    [
        (720, 1280, 512, (512, 288)),
        (1280, 720, 512, (288, 512)),
        (100, 60, 512, (60, 100)),  # never upscaled
        (33, 47, 16, (16, 11)),
    ],
)
def test_thumbnail_is_a_jpeg_of_the_right_size(
    tmp_path: Path, height: int, width: int, max_side: int, expected: tuple[int, int]
) -> None:
    path = tmp_path / "thumb.jpg"
    size = encode.write_thumbnail(gradient(1, height, width)[0], path, max_side=max_side)
    assert size == expected
    with Image.open(path) as image:
        assert image.format == "JPEG"
        assert image.size == expected
        assert image.mode == "RGB"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thumb.jpg"]


def test_thumbnail_accepts_float_frames(tmp_path: Path) -> None:
    frame = np.linspace(0.0, 1.0, 20 * 30 * 3, dtype=np.float64).reshape(20, 30, 3)
    assert encode.write_thumbnail(frame, tmp_path / "t.jpg") == (30, 20)


def test_probe_counts_frames_by_decoding_when_the_container_does_not_say(tmp_path: Path) -> None:
    path = tmp_path / "clip.mkv"  # Matroska records no frame count
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for index, pixels in enumerate(gradient(5, 16, 16)):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    info = probe.probe_mp4(path)
    assert (info.frames, info.width, info.height, info.codec) == (5, 16, 16, "h264")
    assert info.seconds == pytest.approx(5 / 8)


def test_probe_refuses_what_is_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "not.mp4"
    path.write_bytes(b"definitely not a video")
    with pytest.raises(ValueError, match="not a readable video"):
        probe.probe_mp4(path)
    with pytest.raises(FileNotFoundError):
        probe.probe_mp4(tmp_path / "missing.mp4")


# --- sound ----------------------------------------------------------------------------------
def tone(seconds: float, rate: int = 24000, channels: int = 2) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * (c + 1) * t) for c in range(channels)])


def streams(path: Path) -> list[tuple[str, str, float]]:
    with av.open(str(path)) as container:
        return [
            (s.type, s.codec_context.name, float(s.duration * s.time_base))
            for s in container.streams
        ]


# LTX-2's waveform for 25 frames at 24 fps is ~32 ms short; a long one is trimmed.
@pytest.mark.parametrize("audio_seconds", [25 / 24 - 0.032, 25 / 24, 1.5])
@pytest.mark.parametrize("channels", [1, 2])
def test_audio_is_an_aac_track_as_long_as_the_video(
    tmp_path: Path, audio_seconds: float, channels: int
) -> None:
    path = tmp_path / "sound.mp4"
    wave = tone(audio_seconds, channels=channels).astype(np.float32)
    info = encode.encode_mp4(gradient(25, 64, 96), 24, path, audio=wave, sample_rate=24000)
    assert (info.frames, info.has_audio, info.audio_codec) == (25, True, "aac")
    assert (info.audio_sample_rate, info.audio_channels) == (24000, channels)
    [video, audio] = streams(path)
    assert video[:2] == ("video", "h264") and audio[:2] == ("audio", "aac")
    frame = 1 / 24
    assert abs(video[2] - 25 / 24) < frame and abs(audio[2] - 25 / 24) < frame
    assert path.read_bytes()[:64].find(b"moov") > 0  # still +faststart: the index first
    with av.open(str(path)) as container:
        decoded = np.concatenate(
            [f.to_ndarray() for f in container.decode(container.streams.audio[0])], axis=1
        )
    assert np.abs(decoded).max() > 0.1  # the tone survived, not silence


def test_fit_audio_pads_with_silence_or_trims_at_the_end() -> None:
    wave = np.ones((2, 900), np.float32)
    padded = encode.fit_audio(wave, 1000, 1.0)
    assert padded.shape == (2, 1000) and padded[:, :900].all() and not padded[:, 900:].any()
    trimmed = encode.fit_audio(np.ones(1500), 1000, Fraction(1))
    assert trimmed.shape == (1, 1000) and trimmed.dtype == np.float32


@pytest.mark.parametrize(
    ("audio", "rate", "message"),
    [
        (np.zeros((3, 100), np.float32), 24000, "1 or 2 channels"),
        (np.full((2, 100), np.nan, np.float32), 24000, "finite floats"),
        (np.zeros((2, 100), np.int16), 24000, "finite floats"),
        (np.zeros((2, 100), np.float32), None, "sample_rate must be an integer"),
        (np.zeros((2, 100), np.float32), 100, "sample_rate must be an integer"),
    ],
)
def test_bad_audio_is_refused(tmp_path: Path, audio: np.ndarray, rate: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode.encode_mp4(gradient(4, 16, 16), 8, tmp_path / "x.mp4", audio=audio, sample_rate=rate)
    assert not (tmp_path / "x.mp4").exists()


def test_silent_video_has_no_audio_stream(tmp_path: Path) -> None:
    info = encode.encode_mp4(gradient(4, 16, 16), 8, tmp_path / "x.mp4")
    assert (info.has_audio, info.audio_codec, info.audio_sample_rate) == (False, None, None)
    assert [s[0] for s in streams(tmp_path / "x.mp4")] == ["video"]


# --- the encoder choice: NVENC where a GPU is, libx264 otherwise and on any NVENC error --------
def test_auto_picks_libx264_without_an_nvidia_driver(tmp_path: Path) -> None:
    assert encode.NVENC in av.codecs_available  # PyAV's bundled FFmpeg has it
    assert not encode.nvenc_usable()  # ...but this host has no NVIDIA driver
    assert encode.choose_encoder("auto") == "libx264"
    assert encode.choose_encoder("h264_nvenc") == "h264_nvenc"  # forced: tried, then falls back
    with pytest.raises(ValueError, match="encoder must be one of auto, libx264, h264_nvenc"):
        encode.choose_encoder("x265")
    info = encode.encode_mp4(gradient(5, 16, 16), 8, tmp_path / "a.mp4")
    assert (info.codec, info.encoder) == ("h264", "libx264")


def test_forced_nvenc_falls_back_to_libx264_logging_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encode, "_fallback_logged", False)
    with caplog.at_level("WARNING", logger="videoserve.media"):
        first = encode.encode_mp4(gradient(5, 16, 16), 8, tmp_path / "a.mp4", encoder="h264_nvenc")
        second = encode.encode_mp4(gradient(5, 16, 16), 8, tmp_path / "b.mp4", encoder="h264_nvenc")
    for info in (first, second):
        assert (info.codec, info.encoder, info.frames) == ("h264", "libx264", 5)
    fallbacks = [r.getMessage() for r in caplog.records if "h264_nvenc failed" in r.getMessage()]
    assert len(fallbacks) == 1 and "encoding with libx264 instead" in fallbacks[0]
    # no temporary file left by the failed attempts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]


def test_libx264_runs_frame_threads_as_the_ffmpeg_cli_does(tmp_path: Path) -> None:
    # PyAV asks for slice threads by default; x264 then waits on every frame and spends
    # bits on slice boundaries (bench/encode.py). x264 writes the options it ran with into
    # the stream (an SEI message): frame threading says `sliced_threads=0`.
    path = tmp_path / "threads.mp4"
    encode.encode_mp4(gradient(9, 256, 320), 8, path)
    data = path.read_bytes()
    options = data[data.index(b"x264 - core") :][:2000]
    assert b"sliced_threads=0" in options
