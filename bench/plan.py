"""`python -m bench.gpu_pipeline --plan`: the prepared GPU matrix in one process, as one table.

Every row runs the same request (one video at the model's grid size for a 4 s request, the
same seed) on the weights given with `--weights` (a diffusers folder), or on the tiny
random-weight model if none:
- plain diffusers (`from_pretrained`, `pipe.to(device)`, the pipeline's own CFG) against
  videoserve's backend (`families.create_backend`, the loader jobs use);
- batched CFG off and on; First Block Cache;
- each speed option (`attention_backend` per backend, `compile = "regional"`, `quantize` per
  mode), or the reason this host refuses it (`speed.check_host`, as startup does);
- a few-step LoRA entry (a random LoRA over the same base: 4 steps, guidance 1) through
  `AdapterBackend`;
- NVENC against libx264 on the last video's frames (NVENC falls back where it cannot run).
Each row: seconds of loading (compile warm-up included), text encoding, denoising, VAE decode
and the whole call, peak GPU memory, and the denoiser's TFLOP/s from its matmul FLOPs
(`denoiser_flops`, from the transformer's config). With 8 steps the whole plan fits in about 8
minutes on one H200 for Wan 2.1 1.3B (an estimate, not measured: no GPU was at hand when this
was written).
"""

from __future__ import annotations

import gc
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import plan_devices
from bench.gpu_pipeline import NEGATIVE_PROMPT, PROMPT, Clock, DenoiserMeter, denoiser_flops
from videoserve.media.encode import LIBX264, NVENC, encode_mp4
from videoserve.models import random_weights, speed
from videoserve.models.random_weights import Architecture

PLAN_STEPS = 8
LORA_STEPS = 4
SIZE, DURATION, SEED = "1280x720", 4, 0
QUANTIZE_ROWS = ("fp8", "int8_weight_only")


@dataclass(frozen=True)
class Case:
    label: str
    options: dict[str, Any] = field(default_factory=dict)  # DiffusersOptions fields
    plain: bool = False
    lora: bool = False


def cases(attention: tuple[str, ...]) -> list[Case]:
    """The matrix, in the order of the table."""
    return [
        Case("diffusers plain", plain=True),
        Case("videoserve", {"batch_cfg": False}),
        Case("videoserve, batched CFG", {"batch_cfg": True}),
        Case("+ First Block Cache", {"batch_cfg": True, "cache": "first_block"}),
        *(
            Case(f"+ attention {name}", {"batch_cfg": True, "attention_backend": name})
            for name in attention
        ),
        Case("+ compile regional", {"batch_cfg": True, "compile": "regional"}),
        *(
            Case(f"+ quantize {mode}", {"batch_cfg": True, "quantize": mode})
            for mode in QUANTIZE_ROWS
        ),
        Case(f"{LORA_STEPS}-step LoRA entry", {"batch_cfg": True}, lora=True),
    ]


def run_plan(args: Any, attention: tuple[str, ...]) -> dict[str, Any]:
    """Every case on one set of weights; rows in order, then the encoder rows and the table."""
    import torch

    from videoserve.models.backends.tiny import build_tiny_pipeline

    device = args.device
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.weights) if args.weights else Path(scratch) / "tiny"
        if not args.weights:
            build_tiny_pipeline(folder)
        arch = architecture_of(folder)
        lora = _random_lora(folder, Path(scratch) / "lora")
        rows, frames = [], None
        skip = tuple(p.strip() for p in (args.plan_skip or "").split(",") if p.strip())
        for case in cases(attention):
            if any(part in case.label for part in skip):
                rows.append({"case": case.label, "refused": "skipped (--plan-skip)"})
                continue
            refused = _refusal(case, device)
            if refused is not None:
                rows.append({"case": case.label, "refused": refused})
                continue
            row, frames = measure_case(case, folder, arch, lora, args)
            rows.append(row)
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        encoders = _encoder_rows(frames, Path(scratch)) if frames is not None else []
        # The tiny model's 1280x720 latents do not split evenly; its portrait size does.
        request = {
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE_PROMPT,
            "size": SIZE if args.weights else "1024x1792",
            "duration": DURATION,
            "seed": SEED,
            "num_inference_steps": args.steps or PLAN_STEPS,
        }
        devices = plan_devices.run_devices(args, folder, Path(scratch), request)
    text = table(rows, encoders)
    if devices:
        text += "\n\n" + plan_devices.table(devices)
    return {
        "weights": str(args.weights or "tiny"),
        "rows": rows,
        "encoders": encoders,
        "devices": devices,
        "table": text,
    }


def measure_case(
    case: Case, folder: Path, arch: Architecture | None, lora: Path, args: Any
) -> tuple[dict[str, Any], np.ndarray]:
    """One row: load, warm up (2 steps, not measured), then one measured video."""
    import diffusers
    import torch

    from videoserve.models import families
    from videoserve.models import grid as grids
    from videoserve.models.backends.adapters import AdapterBackend
    from videoserve.models.backends.base import GenerationInputs
    from videoserve.models.options import DiffusersOptions
    from videoserve.models.params import DiffusersParams

    device = args.device
    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    steps = LORA_STEPS if case.lora else (args.steps or PLAN_STEPS)
    family = None if args.weights else "tiny"
    begun = time.perf_counter()
    options = DiffusersOptions(family=family, device=device, **case.options)
    base = families.create_backend("plan", str(folder), options, device)
    if case.plain:
        index = json.loads((folder / "model_index.json").read_text())
        dtype = torch.bfloat16 if cuda else torch.float32
        pipe = getattr(diffusers, index["_class_name"]).from_pretrained(
            folder, dtype=dtype, local_files_only=True
        )
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        shape = grids.plan(base.grid, SIZE, DURATION)
        extra = {"frame_rate": shape.fps} if arch is not None and arch.layout == "ltx" else {}

        def call(n: int) -> np.ndarray:
            with torch.inference_mode():
                out = pipe(
                    prompt=PROMPT,
                    negative_prompt=NEGATIVE_PROMPT,
                    height=shape.gen_height,
                    width=shape.gen_width,
                    num_frames=shape.gen_frames,
                    num_inference_steps=n,
                    guidance_scale=base.default_guidance,
                    generator=torch.Generator(device).manual_seed(SEED),
                    output_type="np",
                    **extra,
                )
            return np.asarray(out.frames[0])
    else:
        backend: Any = base
        if case.lora:
            adapter = DiffusersOptions(
                base="plan", loras=[{"path": str(lora)}], steps=LORA_STEPS, guidance=1.0
            )
            backend = AdapterBackend("plan-lora", base, adapter)
        backend.load()
        pipe = base._t2v  # the loaded pipeline, so the clocks can see its phases

        def call(n: int) -> np.ndarray:
            params = DiffusersParams(
                prompt=PROMPT,
                negative_prompt=NEGATIVE_PROMPT,
                size=SIZE,
                duration=DURATION,
                seed=SEED,
                num_inference_steps=n,
            )
            return backend.generate(
                params, GenerationInputs(), lambda s, t: None, lambda: False
            ).frames

    load_seconds = time.perf_counter() - begun
    meter = DenoiserMeter(pipe, arch.layout if arch is not None else "wan2.1")
    clock = Clock(sync)
    clock.wrap(pipe, "encode_prompt", "encode_start", "encode_end")
    clock.wrap(pipe.vae, "decode", "decode_start", "decode_end")
    call(2)  # allocation, autotuning, the LoRA's first load: not measured
    meter.reset()
    clock.marks.clear()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    frames = call(steps)
    sync()
    total = time.perf_counter() - start
    m = clock.marks
    denoise = m["decode_start"] - m["encode_end"]
    flop = None
    if arch is not None:
        flop = denoiser_flops(arch, meter.tokens, meter.text_tokens) * meter.samples
    row = {
        "case": case.label,
        "steps": steps,
        "seconds": {
            "load": round(load_seconds, 3),
            "text_encoding": round(m["encode_end"] - m["encode_start"], 4),
            "denoising": round(denoise, 4),
            "vae_decode": round(m["decode_end"] - m["decode_start"], 4),
            "call": round(total, 4),
        },
        "forwards": meter.forwards,
        "samples": meter.samples,
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "achieved_tflops": None
        if flop is None
        else float(f"{flop / 1e12 / max(denoise, 1e-9):.4g}"),
        "note": f"{steps} steps, {meter.forwards} forwards of {meter.samples} samples",
    }
    if not case.plain:
        base.unload()
    return row, frames


def architecture_of(folder: Path) -> Architecture | None:
    """The transformer's config as `denoiser_flops` reads it; None for an unknown layout."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
        config = json.loads((folder / "transformer" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = str(index.get("_class_name", ""))
    layout = "ltx" if name.startswith("LTX") else "wan2.1" if name.startswith("Wan") else None
    if layout is None:
        return None
    return Architecture(layout=layout, transformer=config, vae={}, text_encoder={}, scheduler={})


def _refusal(case: Case, device: str) -> str | None:
    from videoserve.models.options import RuntimeOptions

    runtime = RuntimeOptions(**{k: v for k, v in case.options.items() if k != "batch_cfg"})
    try:
        speed.check_host(runtime, device)
    except ValueError as exc:
        return str(exc)
    return None


def _random_lora(folder: Path, out: Path) -> Path:
    import diffusers

    index = json.loads((folder / "model_index.json").read_text())
    cls = getattr(diffusers, index["_class_name"])
    pipe = cls.from_pretrained(folder, local_files_only=True)
    return random_weights.save_random_lora(pipe, out, seed=1)


def _encoder_rows(frames: np.ndarray, scratch: Path) -> list[dict[str, Any]]:
    rows = []
    for encoder in (LIBX264, NVENC):
        begun = time.perf_counter()
        info = encode_mp4(frames, 24, scratch / f"{encoder}.mp4", encoder=encoder, durable=False)
        rows.append(
            {
                "asked": encoder,
                "ran": info.encoder,
                "seconds": round(time.perf_counter() - begun, 4),
                "frames": info.frames,
                "size": f"{info.width}x{info.height}",
            }
        )
    return rows


def table(rows: list[dict[str, Any]], encoders: list[dict[str, Any]]) -> str:
    """The plan as one Markdown table, the encoders after it."""
    lines = [
        "| case | load s | text s | denoise s | decode s | call s | peak GB | TFLOP/s | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "refused" in row:
            lines.append(f"| {row['case']} | | | | | | | | refused: {row['refused']} |")
            continue
        s = row["seconds"]
        peak = "n/a" if row["peak_gpu_memory_gb"] is None else row["peak_gpu_memory_gb"]
        tflops = row["achieved_tflops"] if row["achieved_tflops"] is not None else "n/a"
        lines.append(
            f"| {row['case']} | {s['load']} | {s['text_encoding']} | {s['denoising']} | "
            f"{s['vae_decode']} | {s['call']} | {peak} | {tflops} | {row['note']} |"
        )
    lines += [
        "",
        "| encoder asked | encoder ran | seconds | frames | size |",
        "|---|---|---|---|---|",
    ]
    for enc in encoders:
        cells = (enc["asked"], enc["ran"], enc["seconds"], enc["frames"], enc["size"])
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)
