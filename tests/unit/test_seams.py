"""Joining chained passes' sound: exact length, a crossfade over the overlapping frame."""

from __future__ import annotations

import numpy as np
import pytest

from videoserve.models.backends import seams


def test_two_passes_join_to_the_joined_frames_length_with_a_crossfade() -> None:
    rate, fps = 1000, 10  # one frame = 100 samples
    first = np.full((2, 3300), 1.0, np.float32)  # 33 frames
    second = np.full((2, 3260), -1.0, np.float32)  # 33 frames, 40 samples short: padded
    joined = seams.join_passes([first, second], (33, 33), fps, rate)
    assert joined.shape == (2, 6500) and joined.dtype == np.float32  # 65 frames
    assert (joined[:, :3200] == 1.0).all()  # the first pass up to the overlapping frame
    seam = joined[0, 3200:3300]
    assert seam[0] == pytest.approx(1.0) and seam[-1] == pytest.approx(-1.0, abs=1e-6)
    assert (np.diff(seam) <= 0).all()  # a fade from one to the other
    assert (joined[:, 3300:6460] == -1.0).all()
    assert not joined[:, 6460:].any()  # the second pass was short: silence at its end


def test_equal_power_keeps_the_loudness_of_one_sound_across_the_seam() -> None:
    rate, fps = 24000, 24
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)[np.newaxis]
    joined = seams.join_passes([tone, tone], (24, 24), fps, rate)
    assert joined.shape == (1, round(47 * rate / fps))
    assert np.abs(joined).max() <= 0.5 * np.sqrt(2) + 1e-6


def test_mono_and_stereo_passes_join_as_stereo() -> None:
    joined = seams.join_passes(
        [np.zeros(100, np.float32), np.zeros((2, 100), np.float32)], (1, 1), 10, 1000
    )
    assert joined.shape == (2, 100)  # two 1-frame passes overlap entirely: one frame


def test_count_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="1 waveforms for 2 passes"):
        seams.join_passes([np.zeros((1, 10))], (1, 1), 10, 1000)
