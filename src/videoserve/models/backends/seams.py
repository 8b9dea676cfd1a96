"""Joining the waveforms of chained passes, the way their frames are joined.

A later pass re-renders the previous pass's last frame as its own first frame, and that frame
is dropped from the video. Its sound is not dropped outright: the two passes both have sound
for that one frame's time, so the join crossfades them there (equal power, so the loudness
does not dip), and the result lasts exactly as long as the joined frames.
"""

from __future__ import annotations

import numpy as np


def join_passes(
    waves: list[np.ndarray], frames: tuple[int, ...], fps: float, sample_rate: int
) -> np.ndarray:
    """One (channels, samples) float32 waveform for passes of `frames` joined at the seams.

    Each pass's waveform is first fitted to its own frames' duration (padded with silence or
    trimmed at its end, as the encoder does for a single pass); consecutive passes overlap by
    one frame, crossfaded.
    """
    if len(waves) != len(frames) or not waves:
        raise ValueError(f"{len(waves)} waveforms for {len(frames)} passes")
    overlap = round(sample_rate / fps)
    fitted = [
        _fit(wave, round(count * sample_rate / fps))
        for wave, count in zip(waves, frames, strict=True)
    ]
    channels = max(wave.shape[0] for wave in fitted)
    fitted = [np.broadcast_to(wave, (channels, wave.shape[1])) for wave in fitted]
    ramp = np.linspace(0.0, np.pi / 2, overlap, dtype=np.float32)
    fade_out, fade_in = np.cos(ramp), np.sin(ramp)
    joined = fitted[0]
    for wave in fitted[1:]:
        seam = joined[:, -overlap:] * fade_out + wave[:, :overlap] * fade_in
        joined = np.concatenate([joined[:, :-overlap], seam, wave[:, overlap:]], axis=1)
    total = round((sum(frames) - (len(frames) - 1)) * sample_rate / fps)
    return np.ascontiguousarray(_fit(joined, total), dtype=np.float32)


def _fit(wave: np.ndarray, samples: int) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    wave = wave.reshape(1, -1) if wave.ndim == 1 else wave
    wave = wave[:, :samples]
    if wave.shape[1] < samples:
        wave = np.pad(wave, ((0, 0), (0, samples - wave.shape[1])))
    return wave
