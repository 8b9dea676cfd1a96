"""`tiny-t2v`: a real Wan pipeline with tiny random weights, built in code, outputs noise.

It exists so every path (queue, worker, progress, cancel, encoding, I2V) runs in tests and on a
CPU without downloading anything. The weights are saved as an ordinary diffusers folder and
loaded through `WanBackend.load`, the same loader real weights use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import threading
from pathlib import Path

from videoserve.models.backends.base import Availability
from videoserve.models.backends.wan import WanBackend
from videoserve.models.grid import TINY_GRID

log = logging.getLogger("videoserve.models")

TINY_NAME = "tiny-t2v"
_BUILD_LOCK = threading.Lock()

# A handful of whole words on top of printable ASCII, so prompts tokenize without <unk>.
_WORDS = (
    "a an the of and in on at with cat dog bird fish horse video sunset sunrise tree forest "
    "druid city street car ocean river mountain sky cloud rain snow night day light walking "
    "running flying slow motion cinematic"
)


def build_tiny_pipeline(folder: Path, seed: int = 0) -> None:
    """Save a Wan 2.2 TI2V-5B-layout `WanPipeline` with tiny random weights to `folder`.

    Built in a temporary sibling folder and renamed into place, so a reader never sees half a
    model; when another process wins the race, its folder is kept. The same seed gives the
    same weights, and the caller's global torch RNG is left untouched.
    """
    folder = Path(folder)
    if (folder / "model_index.json").exists():
        return
    # torch's seed is process-wide: builds in one process take turns so each gets its seed.
    with _BUILD_LOCK:
        if not (folder / "model_index.json").exists():
            _build(folder, seed)


def _build(folder: Path, seed: int) -> None:
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

    words = [
        "<pad>",
        "</s>",
        "<unk>",
        *(chr(c) for c in range(32, 127)),
        *("▁" + w for w in _WORDS.split()),
    ]
    vocab = [(word, -float(i) / 10) for i, word in enumerate(words)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    tok = T5TokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(words),
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
            )
        ).eval()
        vae = AutoencoderKLWan(
            base_dim=3,
            z_dim=48,
            in_channels=12,
            out_channels=12,
            is_residual=True,
            patch_size=2,
            latents_mean=[0.0] * 48,
            latents_std=[1.0] * 48,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            scale_factor_spatial=16,
            scale_factor_temporal=4,
            temperal_downsample=[False, True, True],
        )
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=48,
            out_channels=48,
            text_dim=32,
            freq_dim=256,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    pipe = WanPipeline(
        tokenizer=tok,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
        expand_timesteps=True,
    )

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.tmp")
    try:
        pipe.save_pretrained(staging)
        publish(staging, folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)


def publish(staging: Path, folder: Path) -> bool:
    """Rename a complete build into place; False (theirs kept) if another process won."""
    try:
        # rename() replaces nothing but an empty folder, so the first complete build wins.
        os.rename(staging, folder)
    except OSError:
        if not (folder / "model_index.json").exists():
            raise
        log.debug("another process built %s first; keeping theirs", folder)
        return False
    log.info("built the tiny random-weight model in %s", folder)
    return True


class TinyBackend(WanBackend):
    """The built-in `tiny-t2v`: always available, built on first load, then loaded like Wan."""

    def __init__(
        self,
        path: Path,
        *,
        name: str = TINY_NAME,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        super().__init__(
            name, path, TINY_GRID, device=device, default_steps=4, default_guidance=5.0
        )
        self.seed = seed

    def availability(self) -> Availability:
        return Availability(True)

    def load(self) -> None:
        with self._lock:
            if not self.loaded and not (self.path / "model_index.json").exists():
                build_tiny_pipeline(self.path, self.seed)
            super().load()
