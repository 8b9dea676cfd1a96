"""LTX-2 with tiny random weights, built in code: the layout of the real checkpoint, toy widths.

What the size grid and the audio length depend on is kept as in LTX-2.0: the video VAE's 4x4
patches and four down blocks (32x spatial, 8x temporal; set explicitly, since the class would
infer 64x / 16x from this layout), the transformer's 1x1 patches and positional ranges (its
defaults: `vae_scale_factors=(8, 32, 32)`, `pos_embed_max_pos=20`, `base_*=2048`), the audio
VAE's 4x temporal / 4x mel compression at 16 kHz with a hop of 160, and a vocoder that
upsamples 240x to 24 kHz stereo. Widths, depths and the Gemma 3 text encoder are toy-sized.
The tokenizer is a character-level Unigram vocabulary wrapped in `GemmaTokenizerFast`.
"""

from __future__ import annotations

from typing import Any

# A Gemma 3 text tower of 2 layers, 32 wide (the pipeline stacks every layer's hidden states).
_GEMMA_LAYERS = 2
_GEMMA_WIDTH = 32
SAMPLE_RATE = 24000  # the vocoder's output, as LTX-2.0's


def tokenizer() -> Any:
    """A small Gemma tokenizer built in code: printable ASCII, one token per character."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import GemmaTokenizerFast

    words = ["<pad>", "<eos>", "<bos>", "<unk>", *(chr(c) for c in range(32, 127))]
    vocab = [(word, -float(i) / 10) for i, word in enumerate(words)]
    model = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 2)]
    )
    tok = GemmaTokenizerFast(
        tokenizer_object=model,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )
    # The backend pads prompts to at most this (the pipeline's own default is 1024 tokens).
    tok.model_max_length = 64
    return tok


def build_pipeline(*, seed: int = 0) -> Any:
    """An `LTX2Pipeline` with random weights from `seed`; the caller's RNG is left as it was."""
    import torch
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2Pipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    tok = tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = Gemma3ForConditionalGeneration(
            Gemma3Config(
                text_config=Gemma3TextConfig(
                    vocab_size=len(tok),
                    hidden_size=_GEMMA_WIDTH,
                    intermediate_size=64,
                    num_hidden_layers=_GEMMA_LAYERS,
                    num_attention_heads=2,
                    num_key_value_heads=1,
                    head_dim=16,
                    sliding_window=64,
                    max_position_embeddings=64,
                ),
                vision_config=SiglipVisionConfig(
                    hidden_size=16,
                    intermediate_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    image_size=32,
                    patch_size=8,
                ),
                mm_tokens_per_image=4,
            )
        ).eval()
        transformer = LTX2VideoTransformer3DModel(
            in_channels=8,
            out_channels=8,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=2,
            attention_head_dim=8,
            cross_attention_dim=16,
            audio_in_channels=8,  # audio latent channels x mel bins / 4
            audio_out_channels=8,
            audio_num_attention_heads=2,
            audio_attention_head_dim=4,
            audio_cross_attention_dim=8,
            num_layers=2,
            qk_norm="rms_norm_across_heads",
            caption_channels=_GEMMA_WIDTH,
            rope_type="split",
            rope_double_precision=False,
        )
        connectors = LTX2TextConnectors(
            caption_channels=_GEMMA_WIDTH,
            text_proj_in_factor=_GEMMA_LAYERS + 1,
            video_connector_num_attention_heads=4,
            video_connector_attention_head_dim=8,
            video_connector_num_layers=1,
            video_connector_num_learnable_registers=None,
            audio_connector_num_attention_heads=4,
            audio_connector_attention_head_dim=8,
            audio_connector_num_layers=1,
            audio_connector_num_learnable_registers=None,
            connector_rope_base_seq_len=32,
            rope_double_precision=False,
            rope_type="split",
        )
        vae = AutoencoderKLLTX2Video(
            latent_channels=8,
            block_out_channels=(8, 16, 32, 64),
            decoder_block_out_channels=(8, 16, 32),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1),
            patch_size=4,
            spatial_compression_ratio=32,
            temporal_compression_ratio=8,
        )
        audio_vae = AutoencoderKLLTX2Audio(
            base_channels=8,
            output_channels=2,
            ch_mult=(1, 2, 4),
            num_res_blocks=1,
            in_channels=2,
            resolution=32,
            latent_channels=2,
            sample_rate=16000,
            mel_hop_length=160,
            mel_bins=16,
        )
        vocoder = LTX2Vocoder(
            in_channels=2 * 16,
            hidden_channels=16,
            out_channels=2,
            upsample_kernel_sizes=[12, 10, 16],
            upsample_factors=[6, 5, 8],  # 240x: 100 mel frames/s -> 24 kHz
            resnet_kernel_sizes=[3],
            resnet_dilations=[[1, 3, 5]],
            output_sampling_rate=SAMPLE_RATE,
        )
    return LTX2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        audio_vae=audio_vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        connectors=connectors,
        transformer=transformer,
        vocoder=vocoder,
    )


def build_upsampler(*, seed: int = 0) -> Any:
    """A tiny `LTX2LatentUpsamplerModel` for the pipeline above: 2x spatial, in latent space."""
    import torch
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LTX2LatentUpsamplerModel(
            in_channels=8,  # the video VAE's latent channels
            mid_channels=32,  # its GroupNorm takes 32 groups
            num_blocks_per_stage=1,
            dims=3,
            spatial_upsample=True,
            use_rational_resampler=False,
        )
