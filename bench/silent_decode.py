"""What `audio: false` saves on LTX-2: generations with and without the sound's decode.

Builds the tiny LTX-2 folder (random weights, the real checkpoint's compression ratios) in a
temporary folder, loads it through the same factory the registry uses, and times generations
of 4 s at the tiny grid (160x90, 33 frames, 2 steps) with `audio` true (the baseline) and
false, alternating so both see the same machine. CPU only; bounded by `--runs`.

    python -m bench.silent_decode --runs 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="generations of each kind")
    args = parser.parse_args()

    import torch

    from videoserve.models import families, random_weights_ltx2
    from videoserve.models.backends.base import GenerationInputs
    from videoserve.models.options import DiffusersOptions
    from videoserve.models.params import AudioDiffusersParams

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "ltx2"
        random_weights_ltx2.build_pipeline(seed=1).save_pretrained(folder)
        options = DiffusersOptions(family="tiny", max_frames=33)
        backend = families.create_backend("ltx2", str(folder), options, "cpu")
        base = AudioDiffusersParams(prompt="a cat", duration=4, num_inference_steps=2, seed=1)
        kinds = {"audio": base, "silent": base.model_copy(update={"audio": False})}
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        for params in kinds.values():  # warm-up: load, first-call allocations
            backend.generate(params, GenerationInputs(), lambda s, t: None, lambda: False)
        for _ in range(args.runs):
            for kind, params in kinds.items():
                begun = time.perf_counter()
                backend.generate(params, GenerationInputs(), lambda s, t: None, lambda: False)
                times[kind].append(time.perf_counter() - begun)
    medians = {kind: statistics.median(values) * 1000 for kind, values in times.items()}
    print(
        json.dumps(
            {
                "runs": args.runs,
                "audio_ms_p50": round(medians["audio"], 1),
                "silent_ms_p50": round(medians["silent"], 1),
                "saved_percent": round(100 * (1 - medians["silent"] / medians["audio"]), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
