"""Pipelines of every supported layout with random weights, built from architecture configs.

The built-in `tiny-t2v`, the tests of each family and the GPU benchmark all need real diffusers
pipelines without downloading anything: the tests and `tiny-t2v` at toy sizes, the benchmark at
the published sizes. Each builds from an `Architecture` (the dicts a downloaded folder's
`config.json` files would hold), so every layout is written down once, here. The tokenizer is a
small Unigram vocabulary wrapped in `T5TokenizerFast`: it saves and reloads like a real one, and
its ids fit any T5/UMT5 vocabulary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import T5TokenizerFast

LAYOUTS = ("wan2.1", "wan2.1-i2v", "wan2.2-ti2v", "ltx")

# A handful of whole words on top of printable ASCII, so prompts tokenize without <unk>.
_WORDS = (
    "a an the of and in on at with cat dog bird fish horse video sunset sunrise tree forest "
    "druid city street car ocean river mountain sky cloud rain snow night day light walking "
    "running flying slow motion cinematic"
)


@dataclass(frozen=True)
class Architecture:
    """One pipeline's parts as configs: what `from_pretrained` would read from `config.json`."""

    layout: str  # one of LAYOUTS
    transformer: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]  # a UMT5Config (Wan) or T5Config (LTX) without vocab_size
    scheduler: dict[str, Any]
    vocab_size: int | None = None  # None: the tiny tokenizer's own vocabulary size
    image_encoder: dict[str, Any] | None = None  # a CLIPVisionConfig ("wan2.1-i2v" only)


_TINY_UMT5 = {
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
}
_WAN_SCHEDULER = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0}
_TINY_WAN_TRANSFORMER = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "text_dim": 32,
    "freq_dim": 256,
    "ffn_dim": 32,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 32,
}
_TINY_WAN21_VAE = {
    "base_dim": 3,
    "z_dim": 16,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}
# LTX-Video's scheduler config as published with its weights (dynamic shifting by sequence length).
LTX_SCHEDULER = {
    "base_image_seq_len": 1024,
    "base_shift": 0.95,
    "max_image_seq_len": 4096,
    "max_shift": 2.05,
    "shift_terminal": 0.1,
    "use_dynamic_shifting": True,
}

TINY: dict[str, Architecture] = {
    # Wan 2.1 T2V layout: 16 latent channels, 8x spatial / 4x temporal VAE.
    "wan2.1": Architecture(
        layout="wan2.1",
        transformer={**_TINY_WAN_TRANSFORMER, "in_channels": 16, "out_channels": 16},
        vae=_TINY_WAN21_VAE,
        text_encoder=_TINY_UMT5,
        scheduler=_WAN_SCHEDULER,
    ),
    # Wan 2.1 I2V-14B layout: the image through CLIP, concatenated to the latents (36 channels).
    "wan2.1-i2v": Architecture(
        layout="wan2.1-i2v",
        transformer={
            **_TINY_WAN_TRANSFORMER,
            "in_channels": 36,
            "out_channels": 16,
            "image_dim": 4,
            "added_kv_proj_dim": 24,
        },
        vae=_TINY_WAN21_VAE,
        text_encoder=_TINY_UMT5,
        scheduler=_WAN_SCHEDULER,
        image_encoder={
            "hidden_size": 4,
            "projection_dim": 4,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "intermediate_size": 16,
            "patch_size": 1,
        },
    ),
    # Wan 2.2 TI2V-5B layout (the built-in tiny-t2v): 48 channels, 16x spatial VAE with 2x2
    # patches, and `expand_timesteps`, which makes the same weights do image-to-video.
    "wan2.2-ti2v": Architecture(
        layout="wan2.2-ti2v",
        transformer={**_TINY_WAN_TRANSFORMER, "in_channels": 48, "out_channels": 48},
        vae={
            "base_dim": 3,
            "z_dim": 48,
            "in_channels": 12,
            "out_channels": 12,
            "is_residual": True,
            "patch_size": 2,
            "latents_mean": [0.0] * 48,
            "latents_std": [1.0] * 48,
            "dim_mult": [1, 1, 1, 1],
            "num_res_blocks": 1,
            "scale_factor_spatial": 16,
            "scale_factor_temporal": 4,
            "temperal_downsample": [False, True, True],
        },
        text_encoder=_TINY_UMT5,
        scheduler=_WAN_SCHEDULER,
    ),
    # LTX-Video layout: 8x spatial / 8x temporal here (32x / 8x in the real VAE), and the
    # timestep-conditioned decoder of LTX-Video 0.9.1 and later.
    "ltx": Architecture(
        layout="ltx",
        transformer={
            "in_channels": 8,
            "out_channels": 8,
            "patch_size": 1,
            "patch_size_t": 1,
            "num_attention_heads": 4,
            "attention_head_dim": 8,
            "cross_attention_dim": 32,
            "num_layers": 2,
            "caption_channels": 32,
        },
        vae={
            "latent_channels": 8,
            "block_out_channels": (8, 8, 8, 8),
            "decoder_block_out_channels": (8, 8, 8, 8),
            "layers_per_block": (1, 1, 1, 1, 1),
            "decoder_layers_per_block": (1, 1, 1, 1, 1),
            "spatio_temporal_scaling": (True, True, True, False),
            "decoder_spatio_temporal_scaling": (True, True, True, False),
            "decoder_inject_noise": (False, False, False, False, False),
            "patch_size": 1,
            "patch_size_t": 1,
            "timestep_conditioning": True,
        },
        text_encoder=_TINY_UMT5,
        scheduler=LTX_SCHEDULER,
    ),
}


def tokenizer() -> T5TokenizerFast:
    """A small T5 tokenizer built in code: whole words above, else single characters."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    words = [
        "<pad>",
        "</s>",
        "<unk>",
        *(chr(c) for c in range(32, 127)),
        *("▁" + w for w in _WORDS.split()),
    ]
    vocab = [(word, -float(i) / 10) for i, word in enumerate(words)]
    model = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    model.normalizer = normalizers.NFKC()
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=model,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=0,
    )


def build_pipeline(
    arch: Architecture,
    *,
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    vae_dtype: torch.dtype | None = None,
) -> Any:
    """A diffusers pipeline of `arch` with random weights, created directly on `device`.

    The same seed gives the same weights on the same device, and the caller's global RNG state
    is left as it was. `dtype` (default fp32) is the parameters' dtype; `vae_dtype` overrides it
    for the VAE (Wan decodes better in fp32).
    """
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        T5Config,
        T5EncoderModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    if arch.layout not in LAYOUTS:
        raise ValueError(f"unknown layout {arch.layout!r} (known: {', '.join(LAYOUTS)})")
    if (arch.layout == "wan2.1-i2v") != (arch.image_encoder is not None):
        raise ValueError("the wan2.1-i2v layout, and only it, has an image encoder")
    tok = tokenizer()
    vocab = arch.vocab_size or len(tok)
    ltx = arch.layout == "ltx"
    where = torch.device(device)
    rng_devices = [where.index or 0] if where.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        with _creating(where, dtype):
            if ltx:
                text_encoder = T5EncoderModel(T5Config(vocab_size=vocab, **arch.text_encoder))
                transformer = LTXVideoTransformer3DModel(**arch.transformer)
            else:
                text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=vocab, **arch.text_encoder))
                transformer = WanTransformer3DModel(**arch.transformer)
        with _creating(where, vae_dtype or dtype):
            vae = AutoencoderKLLTXVideo(**arch.vae) if ltx else AutoencoderKLWan(**arch.vae)
            image_encoder = (
                CLIPVisionModel(CLIPVisionConfig(**arch.image_encoder))
                if arch.image_encoder is not None
                else None
            )
    parts = {"tokenizer": tok, "text_encoder": text_encoder.eval(), "vae": vae}
    if ltx:
        scheduler = FlowMatchEulerDiscreteScheduler(**arch.scheduler)
        return LTXPipeline(transformer=transformer, scheduler=scheduler, **parts)
    scheduler = UniPCMultistepScheduler(**arch.scheduler)
    if image_encoder is not None:
        side = image_encoder.config.image_size
        return WanImageToVideoPipeline(
            transformer=transformer,
            scheduler=scheduler,
            image_encoder=image_encoder.eval(),
            image_processor=CLIPImageProcessor(crop_size=side, size=side),
            **parts,
        )
    return WanPipeline(
        transformer=transformer,
        scheduler=scheduler,
        expand_timesteps=arch.layout == "wan2.2-ti2v",
        **parts,
    )


LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def save_random_lora(pipe: Any, folder: Path, *, seed: int = 0, rank: int = 4) -> Path:
    """Save a LoRA of random weights for `pipe`'s transformer in diffusers' format; its file.

    peft adds the adapter (with random B as well as A, so that it changes the output), the
    pipeline class's `save_lora_weights` writes it, and the adapter is removed again: `pipe`
    is left as it was, and so is the caller's global RNG.
    """
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = pipe.transformer
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS), init_lora_weights=False
    )
    name = "random_lora"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(config, adapter_name=name)
    try:
        layers = get_peft_model_state_dict(transformer, adapter_name=name)
        type(pipe).save_lora_weights(folder, transformer_lora_layers=layers)
    finally:
        transformer.delete_adapters(name)
    return Path(folder) / "pytorch_lora_weights.safetensors"


@contextlib.contextmanager
def _creating(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Allocate (and randomly initialise) new parameters on `device` in `dtype`.

    Full-size models are created where they run, in the dtype they run in: a 5B text encoder
    initialised in fp32 on the CPU first would take minutes and twice the memory.
    """
    import torch

    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)
