"""Seconds per video of the real pipelines at real shapes, with random weights (no download).

Each model is built from its published architecture config (written below as dicts) with random
weights created directly on the device, then run at its native shape: Wan 2.1 T2V 1.3B at
832x480x81, Wan 2.2 TI2V 5B at 1280x704x121, LTX-Video 2B at 768x512x121, 50 steps with CFG.
Random weights produce noise, but every matmul, attention and convolution runs at the real size,
so the timings are those of real weights. The report splits each video into text encoding,
denoising, VAE decode and MP4 encoding, gives the peak GPU memory, and the denoiser's achieved
TFLOP/s against its matmul FLOPs counted from the config and the token count.

    python -m bench.gpu_pipeline                       # ours: bf16, fastest attention, compile
    python -m bench.gpu_pipeline --plain               # diffusers' documented defaults
    python -m bench.gpu_pipeline --cache first_block   # with First Block Cache
    python -m bench.gpu_pipeline --tiny --device cpu   # toy configs: the harness's own test
    python -m bench.gpu_pipeline --batch-cfg off       # ours without Wan's batched CFG
    python -m bench.gpu_pipeline --plan [--weights DIR] # the prepared matrix (bench/plan.py)

"Plain" is the model cards' recipe: bf16 (the Wan VAE in fp32), `pipe.to(device)`, the default
attention (PyTorch SDPA), the pipeline's own CFG, MP4 encoding after each video. "Ours" adds the
fastest attention backend that works here, `compile_repeated_blocks` (regional torch.compile),
Wan's CFG as one batch, and encodes each MP4 on a thread while the next video generates.
LTXPipeline batches CFG itself (conditional and unconditional in one forward); WanPipeline runs
them as two forwards, which ours batches as videoserve's Wan backend does (`batch_cfg`,
`videoserve.models.backends.cfg`): by default on a GPU only, like the backend, so the CPU
harness test keeps the pipeline's own CFG unless `--batch-cfg on`. The report's `forwards` and
`samples` count the forwards the transformer computed. JSON on stdout (and in --out), progress
on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from videoserve.media.encode import encode_mp4
from videoserve.models import random_weights
from videoserve.models.random_weights import LTX_SCHEDULER, Architecture

# --- published architectures -----------------------------------------------------------------
# UMT5-XXL (google/umt5-xxl), Wan's text encoder; T5-XXL v1.1, LTX-Video's.
UMT5_XXL = {
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
}
T5_XXL = dict(UMT5_XXL)
WAN_TRANSFORMER = {
    "patch_size": (1, 2, 2),
    "attention_head_dim": 128,
    "text_dim": 4096,
    "freq_dim": 256,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
WAN_SCHEDULER = {"prediction_type": "flow_prediction", "use_flow_sigmas": True}

FULL: dict[str, Architecture] = {
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers: dim 1536 (12 x 128), 30 layers, ffn 8960, 16 channels.
    "wan2.1-t2v-1.3b": Architecture(
        layout="wan2.1",
        transformer={
            **WAN_TRANSFORMER,
            "num_attention_heads": 12,
            "ffn_dim": 8960,
            "in_channels": 16,
            "out_channels": 16,
        },
        vae={},  # AutoencoderKLWan's defaults are the Wan 2.1 VAE
        text_encoder=UMT5_XXL,
        scheduler={**WAN_SCHEDULER, "flow_shift": 3.0},
        vocab_size=256384,
    ),
    # Wan-AI/Wan2.2-TI2V-5B-Diffusers: dim 3072 (24 x 128), 30 layers, ffn 14336, 48 channels,
    # the 16x spatial VAE of Wan 2.2.
    "wan2.2-ti2v-5b": Architecture(
        layout="wan2.2-ti2v",
        transformer={
            **WAN_TRANSFORMER,
            "num_attention_heads": 24,
            "ffn_dim": 14336,
            "in_channels": 48,
            "out_channels": 48,
        },
        vae={
            "base_dim": 160,
            "decoder_base_dim": 256,
            "z_dim": 48,
            "in_channels": 12,
            "out_channels": 12,
            "is_residual": True,
            "patch_size": 2,
            "scale_factor_spatial": 16,
            "scale_factor_temporal": 4,
            "latents_mean": [0.0] * 48,
            "latents_std": [1.0] * 48,
        },
        text_encoder=UMT5_XXL,
        scheduler={**WAN_SCHEDULER, "flow_shift": 5.0},
        vocab_size=256384,
    ),
    # Lightricks/LTX-Video (0.9.x, 2B): LTXVideoTransformer3DModel's defaults are the 2B
    # transformer (dim 2048 = 32 x 64, 28 layers, ffn 4 x dim); AutoencoderKLLTXVideo's
    # defaults its 128-channel, 32x/8x VAE.
    "ltx-video-2b": Architecture(
        layout="ltx",
        transformer={},
        vae={},
        text_encoder=T5_XXL,
        scheduler=LTX_SCHEDULER,
        vocab_size=32128,
    ),
}


@dataclass(frozen=True)
class Shape:
    width: int
    height: int
    frames: int
    steps: int
    guidance: float
    fps: int


SHAPES = {
    "wan2.1-t2v-1.3b": Shape(832, 480, 81, 50, 5.0, 16),
    "wan2.2-ti2v-5b": Shape(1280, 704, 121, 50, 5.0, 24),
    "ltx-video-2b": Shape(768, 512, 121, 50, 3.0, 24),
}
TINY = {
    "wan2.1-t2v-1.3b": random_weights.TINY["wan2.1"],
    "wan2.2-ti2v-5b": random_weights.TINY["wan2.2-ti2v"],
    "ltx-video-2b": random_weights.TINY["ltx"],
}
TINY_SHAPE = Shape(64, 64, 9, 2, 5.0, 8)
ATTENTION_BACKENDS = ("_flash_3", "flash", "sage", "_native_cudnn", "native")
PROMPT = "a druid walks through a misty forest at sunset, cinematic lighting, slow motion"
NEGATIVE_PROMPT = "blurry, low quality"


# --- FLOPs -----------------------------------------------------------------------------------
def denoiser_flops(arch: Architecture, tokens: int, text_tokens: int) -> float:
    """Matmul FLOPs of one transformer forward for one sample (multiply-add = 2 FLOPs).

    Per block: self-attention projections (4 L d^2 MACs) and scores plus weighted sum (2 L^2 d),
    cross-attention Q/O on the video tokens (2 L d^2), K/V on the text tokens (2 T d^2),
    scores plus weighted sum (2 L T d), and the feed-forward (2 L d f); then the patch
    embedding and the output projection. Norms, RoPE and activations are left out (<1%).
    """
    cfg = arch.transformer
    ltx = arch.layout == "ltx"
    heads = cfg.get("num_attention_heads", 32 if ltx else 40)
    dim = heads * cfg.get("attention_head_dim", 64 if ltx else 128)
    ffn = 4 * dim if ltx else cfg["ffn_dim"]
    layers = cfg.get("num_layers", 28 if ltx else 40)
    patch = 1 if ltx else int(np.prod(cfg.get("patch_size", (1, 2, 2))))
    channels = cfg.get("in_channels", 128) + cfg.get("out_channels", 128)
    L, T = tokens, text_tokens
    block = 4 * L * dim * dim + 2 * L * L * dim + 2 * L * dim * dim + 2 * T * dim * dim
    block += 2 * L * T * dim + 2 * L * dim * ffn
    return 2.0 * (layers * block + L * dim * channels * patch)


class DenoiserMeter:
    """Counts the transformer's forwards and samples, and the tokens each one saw.

    Forwards are counted at the input projection, where a forward's computation starts: a call
    that batched CFG answers with the half it kept computes nothing and counts as none.
    """

    def __init__(self, pipe: Any, layout: str) -> None:
        self.layout = layout
        self.forwards = self.samples = self.tokens = self.text_tokens = 0
        pipe.transformer.register_forward_pre_hook(self._measure, with_kwargs=True)
        first = pipe.transformer.proj_in if layout == "ltx" else pipe.transformer.patch_embedding
        first.register_forward_pre_hook(self._count)

    def _count(self, module: Any, args: tuple) -> None:
        self.forwards += 1
        self.samples += args[0].shape[0]

    def _measure(self, module: Any, args: tuple, kwargs: dict) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        text = kwargs.get("encoder_hidden_states")
        if self.layout == "ltx":  # packed (B, L, C)
            self.tokens = hidden.shape[1]
        else:  # (B, C, F, H, W), patches of (1, 2, 2)
            self.tokens = hidden.shape[2] * (hidden.shape[3] // 2) * (hidden.shape[4] // 2)
        self.text_tokens = text.shape[1] if text is not None else 0

    def reset(self) -> None:
        self.forwards = self.samples = 0


# --- timing ----------------------------------------------------------------------------------
@dataclass
class Clock:
    """Wall time of the pipeline's phases, synchronised with the device.

    A phase's first call counts: with batched CFG the prompts are encoded before the pipeline
    call, which then calls `encode_prompt` again with the embeddings (a no-op).
    """

    sync: Callable[[], None]
    marks: dict[str, float] = field(default_factory=dict)

    def wrap(self, owner: Any, method: str, start: str, end: str) -> None:
        original = getattr(owner, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            self.sync()
            self.marks.setdefault(start, time.perf_counter())
            result = original(*args, **kwargs)
            self.sync()
            self.marks.setdefault(end, time.perf_counter())
            return result

        setattr(owner, method, timed)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pick_attention(pipe: Any, device: str, trial: Callable[[], None]) -> str:
    """The first attention backend that is installed and runs this pipeline here."""
    if not device.startswith("cuda"):
        return "native"
    for backend in ATTENTION_BACKENDS:
        try:
            pipe.transformer.set_attention_backend(backend)
            trial()
            return backend
        except Exception as exc:  # not installed, or cannot take this shape/mask/dtype
            log(f"  attention {backend}: unavailable ({type(exc).__name__}: {exc})"[:200])
    pipe.transformer.set_attention_backend("native")
    return "native"


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from videoserve.models.backends import cfg  # imports diffusers: only when benchmarking

    arch = TINY[name] if args.tiny else FULL[name]
    shape = TINY_SHAPE if args.tiny else SHAPES[name]
    steps = args.steps or shape.steps
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    vae_dtype = torch.float32 if arch.layout != "ltx" else dtype  # as the Wan model cards do

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    log(f"{name}: building {'toy' if args.tiny else 'full-size'} weights on {args.device}")
    begun = time.perf_counter()
    pipe = random_weights.build_pipeline(
        arch, device=args.device, dtype=dtype, vae_dtype=vae_dtype, seed=0
    )
    pipe.set_progress_bar_config(disable=True)
    build_seconds = time.perf_counter() - begun
    if args.cache == "first_block":
        from diffusers.hooks import FirstBlockCacheConfig

        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    # Ours batches Wan's CFG where videoserve's backend does by default: on a GPU.
    batch_cfg = (
        not args.plain
        and arch.layout != "ltx"
        and (args.batch_cfg == "on" or (args.batch_cfg == "auto" and cuda))
    )
    if batch_cfg:
        cfg.install(pipe)
    cfg_runs: list[cfg.CFGRun] = []  # the last video's, read for the report
    meter = DenoiserMeter(pipe, arch.layout)
    clock = Clock(sync)
    clock.wrap(pipe, "encode_prompt", "encode_start", "encode_end")
    clock.wrap(pipe.vae, "decode", "decode_start", "decode_end")

    def generate(num_steps: int) -> np.ndarray:
        kwargs: dict[str, Any] = {"frame_rate": shape.fps} if arch.layout == "ltx" else {}
        prompts: dict[str, Any] = {"prompt": PROMPT, "negative_prompt": NEGATIVE_PROMPT}
        with torch.inference_mode(), contextlib.ExitStack() as stack:
            if batch_cfg:
                embeds = cfg.encode_prompts(pipe, PROMPT, NEGATIVE_PROMPT)
                cfg_runs[:] = [stack.enter_context(cfg.batching(pipe, *embeds))]
                prompts = {"prompt_embeds": embeds[0], "negative_prompt_embeds": embeds[1]}
            output = pipe(
                **prompts,
                height=shape.height,
                width=shape.width,
                num_frames=shape.frames,
                num_inference_steps=num_steps,
                guidance_scale=shape.guidance,
                generator=torch.Generator(args.device).manual_seed(0),
                output_type="np",
                **kwargs,
            )
        return np.asarray(output.frames[0])

    attention = "native"
    compiled = False
    if not args.plain:
        attention = pick_attention(pipe, args.device, lambda: generate(1))
        if cuda and args.compile:
            pipe.transformer.compile_repeated_blocks(fullgraph=True)
            compiled = True
    log(f"{name}: warm-up (attention {attention}, compiled {compiled})")
    generate(2)  # compiles, allocates, autotunes: not measured

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    runs = []
    overlap = not args.plain
    pending: Future | None = None
    exposed_encode = 0.0
    with ThreadPoolExecutor(1) as encoder, tempfile.TemporaryDirectory() as scratch:
        wall = time.perf_counter()
        for index in range(args.videos):
            meter.reset()
            clock.marks.clear()
            sync()
            start = time.perf_counter()
            frames = generate(steps)
            sync()
            end = time.perf_counter()
            marks = dict(clock.marks)
            path = Path(scratch) / f"{index}.mp4"
            if overlap:
                if pending is not None:
                    waited = time.perf_counter()
                    pending.result()
                    exposed_encode += time.perf_counter() - waited
                pending = encoder.submit(_timed_encode, frames, shape.fps, path)
                encode = None
            else:
                encode = _timed_encode(frames, shape.fps, path)
                exposed_encode += encode
            runs.append((start, end, marks, meter.forwards, meter.samples, encode))
            log(f"{name}: video {index + 1}/{args.videos} in {end - start:.2f}s")
        if pending is not None:
            waited = time.perf_counter()
            last = pending.result()
            exposed_encode += time.perf_counter() - waited
            runs[-1] = (*runs[-1][:5], last)
        wall = time.perf_counter() - wall

    seconds = _phase_means(runs)
    seconds["mp4_encode_exposed"] = exposed_encode / args.videos
    seconds["per_video_wall"] = wall / args.videos
    forwards, samples = runs[-1][3], runs[-1][4]
    per_sample = denoiser_flops(arch, meter.tokens, meter.text_tokens)
    total_flop = per_sample * samples
    return {
        "model": name,
        "width": shape.width,
        "height": shape.height,
        "frames": shape.frames,
        "steps": steps,
        "guidance": shape.guidance,
        "dtype": str(dtype).removeprefix("torch."),
        "attention_backend": attention,
        "compiled": compiled,
        "cache": args.cache,
        # Wan: true only if the last video batched every step (`forwards` shows it too).
        "cfg_batched": arch.layout == "ltx"
        or any(run.batched and run.stopped is None for run in cfg_runs),
        "mp4_overlapped": overlap,
        "build_seconds": round(build_seconds, 3),
        "seconds": {key: round(value, 4) for key, value in seconds.items()},
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "denoiser": {
            "tokens": meter.tokens,
            "text_tokens": meter.text_tokens,
            "forwards": forwards,
            "samples": samples,
            "tflop_per_sample_forward": _sig(per_sample / 1e12),
            "tflop": _sig(total_flop / 1e12),
            "achieved_tflops": _sig(total_flop / 1e12 / max(seconds["denoising"], 1e-9)),
        },
    }


def _sig(value: float) -> float:
    """Four significant digits: toy runs are in the 1e-7 TFLOP range, real ones in the 100s."""
    return float(f"{value:.4g}")


def _timed_encode(frames: np.ndarray, fps: int, path: Path) -> float:
    begun = time.perf_counter()
    encode_mp4(frames, fps, path)
    return time.perf_counter() - begun


def _phase_means(runs: list[tuple]) -> dict[str, float]:
    phases: dict[str, list[float]] = {
        "text_encoding": [],
        "denoising": [],
        "vae_decode": [],
        "mp4_encode": [],
        "other": [],
        "total": [],
    }
    for start, end, marks, _, _, encode in runs:
        text = marks["encode_end"] - marks["encode_start"]
        denoise = marks["decode_start"] - marks["encode_end"]
        decode = marks["decode_end"] - marks["decode_start"]
        phases["text_encoding"].append(text)
        phases["denoising"].append(denoise)
        phases["vae_decode"].append(decode)
        phases["mp4_encode"].append(encode or 0.0)
        phases["other"].append((end - start) - text - denoise - decode)
        phases["total"].append((end - start) + (encode or 0.0))
    return {key: float(np.mean(values)) for key, values in phases.items()}


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(FULL), help="comma-separated")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--plain", action="store_true", help="diffusers' defaults, no tuning")
    parser.add_argument("--cache", choices=["first_block"], default=None)
    parser.add_argument(
        "--batch-cfg",
        choices=["auto", "on", "off"],
        default="auto",
        help="ours: Wan's CFG as one batch (auto: on a GPU); plain never batches Wan",
    )
    parser.add_argument("--tiny", action="store_true", help="toy configs and shapes (CPU test)")
    parser.add_argument("--steps", type=int, default=None, help="override the denoising steps")
    parser.add_argument("--videos", type=int, default=2, help="measured videos per model")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--plan", action="store_true", help="the prepared matrix (bench/plan.py)")
    parser.add_argument("--weights", type=Path, default=None, help="--plan: a diffusers folder")
    parser.add_argument("--plan-skip", default="", help="--plan: skip cases naming these")
    parser.add_argument(
        "--plan-devices",
        type=int,
        default=None,
        help="--plan: worker-group rows up to this many devices (default: every GPU; none on "
        "the CPU)",
    )
    args = parser.parse_args(argv)

    import diffusers
    import torch

    if args.plan:
        from bench import plan

        with _threads(args.threads):
            report = {
                "bench": "gpu_pipeline --plan",
                "device": args.device,
                "gpu": torch.cuda.get_device_name(args.device) if args.device != "cpu" else None,
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                **plan.run_plan(args, ATTENTION_BACKENDS),
            }
        log(report["table"])
        text = json.dumps(report, indent=2)
        if args.out:
            args.out.write_text(text + "\n")
        print(text)
        return report

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(FULL))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)} (known: {', '.join(FULL)})")
    with _threads(args.threads):
        results = [bench_model(name, args) for name in names]
    report = {
        "bench": "gpu_pipeline",
        "mode": "plain" if args.plain else "ours",
        "tiny": args.tiny,
        "device": args.device,
        "gpu": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "videos_per_model": args.videos,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "results": results,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
