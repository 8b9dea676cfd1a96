"""A source video's sound: decoded with PyAV from real MP4s (mono, stereo, none), resampled,
and joined at an extension's seam (`continuation._stitched_sound`, as `extend` uses it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from videoserve.media.encode import encode_mp4
from videoserve.media.video_input import VideoLimits, decode_video, resample_audio
from videoserve.models.backends import continuation
from videoserve.models.backends.base import GeneratedVideo

LIMITS = VideoLimits(max_bytes=10**7, max_seconds=30, max_pixels=10**6, max_frames=600)
FRAMES = np.zeros((16, 32, 32, 3), dtype=np.uint8)


def mp4(tmp_path: Path, audio: np.ndarray | None, rate: int | None) -> bytes:
    path = tmp_path / "clip.mp4"
    encode_mp4(FRAMES, 8, path, audio=audio, sample_rate=rate)
    return path.read_bytes()


def sine(channels: int, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return np.tile(0.5 * np.sin(2 * np.pi * 440 * t), (channels, 1)).astype(np.float32)


@pytest.mark.parametrize("channels", [1, 2])
def test_the_sound_of_a_source_is_decoded_at_its_rate(tmp_path: Path, channels: int) -> None:
    decoded = decode_video(mp4(tmp_path, sine(channels, 2.0, 48_000), 48_000), LIMITS, audio=True)
    assert decoded.audio_sample_rate == 48_000
    assert decoded.audio is not None and decoded.audio.shape[0] == channels
    assert abs(decoded.audio.shape[1] / 48_000 - 2.0) < 1 / 8  # within a frame at 8 fps
    assert 0.3 < float(np.sqrt(np.mean(decoded.audio**2))) < 0.4  # a 0.5 sine's RMS: 0.354


def test_no_audio_stream_or_not_asked_is_no_sound(tmp_path: Path) -> None:
    assert decode_video(mp4(tmp_path, None, None), LIMITS, audio=True).audio is None
    with_sound = mp4(tmp_path, sine(2, 2.0, 48_000), 48_000)
    assert decode_video(with_sound, LIMITS).audio is None  # the API's check skips nothing else


def test_resampling_keeps_the_duration_and_the_tone() -> None:
    wave = resample_audio(sine(2, 1.0, 48_000), 48_000, 24_000)
    assert wave.shape[0] == 2 and abs(wave.shape[1] - 24_000) <= 32
    assert np.allclose(
        wave[:, 100:-100], sine(2, 1.0, 24_000)[:, 100 : wave.shape[1] - 100], atol=0.02
    )


def test_the_seam_crossfades_source_and_new_sound_over_one_frame() -> None:
    rate, fps = 24_000, 8.0
    frame = round(rate / fps)
    source = continuation.SourceVideo(FRAMES, fps, np.full((2, 16 * frame), 0.5, np.float32), rate)
    # The new pass: its first frame re-renders the source's last (dropped); 32 frames added.
    new = GeneratedVideo(
        np.zeros((33, 32, 32, 3), np.uint8),
        fps,
        "m",
        audio=np.full((2, 33 * frame), -0.5),
        audio_sample_rate=rate,
    )
    sound = continuation._stitched_sound(source, new, 32)
    assert sound is not None
    wave, out_rate = sound
    assert out_rate == rate and wave.shape == (2, 48 * frame)  # exactly the stitched frames
    assert np.all(wave[:, : 15 * frame] == 0.5) and np.all(wave[:, 16 * frame :] == -0.5)
    seam = wave[0, 15 * frame : 16 * frame]
    assert seam[0] == pytest.approx(0.5) and seam[-1] == pytest.approx(-0.5, abs=1e-3)

    silent_model = GeneratedVideo(np.zeros((33, 32, 32, 3), np.uint8), fps, "m")
    wave, _ = continuation._stitched_sound(source, silent_model, 32) or (None, None)
    assert wave is not None and wave.shape == (2, 48 * frame)
    assert not wave[:, 16 * frame :].any()  # the source's sound, then silence
    silent = continuation.SourceVideo(FRAMES, fps)
    assert continuation._stitched_sound(silent, silent_model, 32) is None
