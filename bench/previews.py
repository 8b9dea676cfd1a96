"""What previews cost the denoising loop: the tiny model's generate with a preview after every
step against the same call with none, side by side in one run (alternating, same seed).

The figure is the median wall time of the whole call (prompt, steps, decode) with previews
over without; the preview work itself (clean-latent estimate, projection, JPEG strip) is also
timed inside the sink. On the tiny model a step is milliseconds, so the ratio is an upper
bound: the preview's cost is fixed by the latents' size, while a real model's step is
seconds (docs/benchmarks.md has the FLOP count at Wan's real shapes).

    python -m bench.previews --rounds 7 --steps 8
Runs on the CPU; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from videoserve.models import previews
from videoserve.models.backends.base import GenerationInputs
from videoserve.models.backends.tiny import TinyBackend, build_tiny_pipeline
from videoserve.models.params import DiffusersParams


class TimedSink:
    """A preview sink that makes the JPEG strip, as the worker's does, and times it."""

    def __init__(self, every: int) -> None:
        self.every, self.seconds = every, 0.0
        self.count = 0
        self.strip_seconds = 0.0

    def offer(self, step: int, total: int, frames: np.ndarray) -> None:
        begun = time.perf_counter()
        previews.strip(frames)
        self.strip_seconds += time.perf_counter() - begun
        self.count += 1


def timed_call(backend: TinyBackend, params: DiffusersParams, sink: TimedSink | None) -> float:
    begun = time.perf_counter()
    backend.generate(params, GenerationInputs(preview=sink), lambda s, t: None, lambda: False)
    return time.perf_counter() - begun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    folder = Path(tempfile.mkdtemp(prefix="bench-previews-")) / "tiny"
    build_tiny_pipeline(folder)
    backend = TinyBackend(folder)
    backend.load()
    params = DiffusersParams.model_validate(
        {
            "prompt": "a lighthouse at dusk",
            "duration": 4,
            "size": "1280x720",
            "num_inference_steps": args.steps,
            "seed": 1,
        }
    )
    timed_call(backend, params, None)  # warm: first call compiles nothing, but loads caches
    timed_call(backend, params, TimedSink(1))  # and reads the preview factors
    off: list[float] = []
    on: list[float] = []
    sinks: list[TimedSink] = []
    for _ in range(args.rounds):
        off.append(timed_call(backend, params, None))
        sink = TimedSink(1)
        on.append(timed_call(backend, params, sink))
        sinks.append(sink)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch threads 2",
        "steps": args.steps,
        "previews_per_call": sinks[0].count,
        "off_seconds_median": round(statistics.median(off), 4),
        "on_seconds_median": round(statistics.median(on), 4),
        "ratio_on_over_off": round(statistics.median(on) / statistics.median(off), 4),
        "strip_ms_per_preview": round(
            1000 * sum(s.strip_seconds for s in sinks) / max(1, sum(s.count for s in sinks)), 3
        ),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
