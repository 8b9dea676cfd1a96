"""HunyuanVideo 1.5 with tiny random weights, built in code: the real layout, toy widths.

What the size grid depends on is kept as in the published checkpoints (diffusers'
`scripts/convert_hunyuan_video1_5_to_diffusers.py`, `TRANSFORMER_CONFIGS`, and the
HunyuanVideo-1.5 README: "compression ratios of 16x in spatial dimensions and 4x along the
temporal axis"): the VAE's 16x spatial / 4x temporal compression and 32 latent channels, the
transformer's 1x1x1 patches, its RoPE theta of 256 and axes split in the ratio 16:56:56 of the
head width (here 4:14:14 of 32), its 65 input channels (latents, the image-condition latents
and their mask). Widths, depths and the text encoders are toy-sized; `target_size` (the
image-to-video pipeline picks its size bucket around it: 640 for the 480p checkpoints, 960 for
720p) is 128 here, so that bucket is the tiny grid's 160x96. The scheduler shift (5.0) and CFG
scale (6.0) are the 480p checkpoints'.

The Qwen2 tokenizer is a byte-level BPE of single bytes (no merges) with Qwen's chat markers
and a chat template of the same shape as Qwen2.5-VL's; the ByT5 tokenizer needs no vocabulary
file. With `image_to_video`, the folder also holds a SigLIP `image_encoder` and its
`feature_extractor`, as `HunyuanVideo15ImageToVideoPipeline` needs.
"""

from __future__ import annotations

from typing import Any

_QWEN_WIDTH = 32  # the transformer's text_embed_dim
_BYT5_WIDTH = 16  # its text_embed_2_dim
_SIGLIP_WIDTH = 16  # its image_embed_dim
TARGET_SIZE = 128

# Qwen2.5-VL's template for plain string contents: one `<|im_start|>role ... <|im_end|>` per
# message, then the assistant's opening when a generation prompt is asked for.
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokenizer() -> Any:
    """A small Qwen2 tokenizer built in code: one token per byte, Qwen's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: i for i, token in enumerate([*specials, *sorted(alphabet)])}
    model = Tokenizer(models.BPE(vocab, merges=[]))
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    model.decoder = decoders.ByteLevel()
    tok = Qwen2TokenizerFast(
        tokenizer_object=model,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
    )
    tok.chat_template = _CHAT_TEMPLATE
    tok.padding_side = "right"  # as the conversion script loads Qwen's
    return tok


def build_pipeline(*, seed: int = 0, image_to_video: bool = False) -> Any:
    """A `HunyuanVideo15Pipeline` (or, with `image_to_video`, its I2V sibling with SigLIP)
    with random weights from `seed`; the caller's RNG is left as it was."""
    import torch
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15ImageToVideoPipeline,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from transformers import (
        ByT5Tokenizer,
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLTextModel,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
        T5Config,
        T5EncoderModel,
    )

    tok = tokenizer()
    tok_2 = ByT5Tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = Qwen2_5_VLTextModel(
            Qwen2_5_VLTextConfig(
                vocab_size=len(tok),
                hidden_size=_QWEN_WIDTH,
                intermediate_size=64,
                num_hidden_layers=2,  # the pipeline reads the third hidden state from the end
                num_attention_heads=2,
                num_key_value_heads=1,
                max_position_embeddings=2048,
                bos_token_id=None,
                eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tok.pad_token_id,
                # Qwen2.5-VL's multimodal RoPE split 16:24:24 of a 64-wide half head, scaled
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": 1000000.0,
                    "mrope_section": [2, 3, 3],
                },
            )
        ).eval()
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=len(tok_2),
                d_model=_BYT5_WIDTH,
                d_kv=8,
                d_ff=32,
                num_layers=1,
                num_heads=2,
                relative_attention_num_buckets=8,
            )
        ).eval()
        transformer = HunyuanVideo15Transformer3DModel(
            in_channels=65,
            out_channels=32,
            num_attention_heads=2,
            attention_head_dim=32,
            num_layers=1,
            num_refiner_layers=1,
            mlp_ratio=2.0,
            patch_size=1,
            patch_size_t=1,
            text_embed_dim=_QWEN_WIDTH,
            text_embed_2_dim=_BYT5_WIDTH,
            image_embed_dim=_SIGLIP_WIDTH,
            rope_theta=256.0,
            rope_axes_dim=(4, 14, 14),
            target_size=TARGET_SIZE,
            task_type="i2v" if image_to_video else "t2v",
        )
        vae = AutoencoderKLHunyuanVideo15(
            latent_channels=32,
            block_out_channels=(8, 16, 16, 32, 64),  # the last: 2 x latent channels
            layers_per_block=1,
            spatial_compression_ratio=16,
            temporal_compression_ratio=4,
        )
        siglip = (
            SiglipVisionModel(
                SiglipVisionConfig(
                    hidden_size=_SIGLIP_WIDTH,
                    intermediate_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    image_size=32,
                    patch_size=8,
                )
            ).eval()
            if image_to_video
            else None
        )
    parts: dict[str, Any] = {
        "text_encoder": text_encoder,
        "tokenizer": tok,
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=5.0),
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tok_2,
        "guider": ClassifierFreeGuidance(guidance_scale=6.0),
    }
    if siglip is None:
        return HunyuanVideo15Pipeline(**parts)
    extractor = SiglipImageProcessor(size={"height": 32, "width": 32})
    return HunyuanVideo15ImageToVideoPipeline(
        **parts, image_encoder=siglip, feature_extractor=extractor
    )
