"""Fit, print and store a model folder's preview projection: `python -m
videoserve.models.backends.preview_factors FOLDER [--write]`.

Reads only the folder's VAE (no text encoder, no transformer), picks the family's decoder by
the VAE's class, and fits the 3 x C matrix and bias by least squares on a few random latents
(`models/previews.py`, `fit_projection`; seeded, so anyone rerunning it gets the same numbers).
With `--write` the factors go to `preview_factors.json` beside the weights, where the backend
reads them at its first preview instead of fitting then. Here rather than in `previews.py` so
that module stays below the families (no import cycle).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from videoserve.models import previews
from videoserve.models.backends.hunyuan15 import hunyuan15_decoder
from videoserve.models.backends.ltx import ltx_decoder
from videoserve.models.backends.wan import wan_decoder

# The VAE classes of the families that preview, and how each decodes the denoiser's latents.
DECODERS: dict[str, Callable[[Any], previews.Decoder]] = {
    "AutoencoderKLWan": wan_decoder,
    "AutoencoderKLLTXVideo": ltx_decoder,
    "AutoencoderKLLTX2Video": ltx_decoder,
    "AutoencoderKLHunyuanVideo15": hunyuan15_decoder,
}


def fit(folder: Path) -> previews.LatentProjection:
    """The projection fitted from the VAE in `folder/vae`; ValueError naming what is wrong."""
    import diffusers

    config = folder / "vae" / "config.json"
    if not config.is_file():
        raise ValueError(f"{folder}: no vae/config.json (not a diffusers model folder)")
    class_name = json.loads(config.read_text()).get("_class_name", "")
    if class_name not in DECODERS:
        known = ", ".join(sorted(DECODERS))
        raise ValueError(f"{folder}: VAE {class_name!r} has no preview decoder (known: {known})")
    vae = getattr(diffusers, class_name).from_pretrained(
        folder, subfolder="vae", local_files_only=True
    )
    decoder = DECODERS[class_name](vae)
    return previews.fit_projection(
        decoder.decode, decoder.channels, spatial=decoder.spatial, temporal=decoder.temporal
    )


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        return 2
    folder = Path(argv[0])
    try:
        projection = fit(folder)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("# rgb = latents . weights + bias (latents as the denoiser sees them)")
    print("weights = [")
    for row in projection.weights:
        print("    [" + ", ".join(f"{v:.4f}" for v in row) + "],")
    print("]")
    print("bias = [" + ", ".join(f"{v:.4f}" for v in projection.bias) + "]")
    if "--write" in argv[1:]:
        print(f"written to {previews.save(projection, folder)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
