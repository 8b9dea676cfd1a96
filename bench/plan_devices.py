"""`--plan` rows over several devices: one video split by a worker group, per split.

For 2, 4 and 8 devices (as many as the host has, or `--plan-devices N`), a worker group of
that many ranks (`videoserve.worker.group`, the path jobs take) runs the plan's request on the
same weights for each split: Ulysses over all ranks, ring over all ranks, and CFG-parallel
(two branches, Ulysses over the rest). Each row: rank 0's load, seconds per denoising step
(between the first and the last step's progress), the whole call, and the peak memory per
device (GPU only). The single-device rows of the same run (`diffusers plain`, `videoserve`)
are the baseline.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from videoserve.models.options import ParallelOptions

DEVICE_COUNTS = (2, 4, 8)


def splits(count: int, heads: int | None) -> list[tuple[str, ParallelOptions]]:
    """The splits a group of `count` ranks runs for the table (Ulysses needs the heads)."""
    rows = []
    if heads is None or heads % count == 0:
        rows.append((f"ulysses {count}", ParallelOptions(ulysses=count)))
    rows.append((f"ring {count}", ParallelOptions(ring=count)))
    half = count // 2
    if half == 1:
        rows.append(("cfg 2", ParallelOptions(cfg=True)))
    elif heads is None or heads % half == 0:
        rows.append((f"cfg 2 x ulysses {half}", ParallelOptions(cfg=True, ulysses=half)))
    return rows


def device_counts(device: str, asked: int | None) -> list[int]:
    """The group sizes this host can run: up to its GPUs, or up to `asked`."""
    if asked is not None:
        available = asked
    elif device.startswith("cuda"):
        import torch

        available = torch.cuda.device_count()
    else:
        available = 0  # CPU: only when asked (the harness's own check)
    return [n for n in DEVICE_COUNTS if n <= available]


def run_devices(args: Any, folder: Path, scratch: Path, request: dict[str, Any]) -> list[dict]:
    """One row per (device count, split) on the weights in `folder`."""
    from videoserve.settings import Settings
    from videoserve.worker.group import WorkerGroup

    rows: list[dict[str, Any]] = []
    config = json.loads((folder / "transformer" / "config.json").read_text())
    heads = config.get("num_attention_heads")
    backend = "tiny" if not args.weights else "diffusers"
    for count in device_counts(args.device, args.plan_devices):
        devices = ["cpu"] * count if args.device == "cpu" else [f"cuda:{i}" for i in range(count)]
        entries = splits(count, heads)
        models = scratch / f"models-{count}.toml"
        models.write_text(
            "".join(
                f'[models."split-{i}"]\nbackend = "{backend}"\npath = "{folder}"\n'
                f"parallel = {{ ulysses = {p.ulysses}, ring = {p.ring}, "
                f"cfg = {str(p.cfg).lower()} }}\n\n"
                for i, (_, p) in enumerate(entries)
            )
        )
        settings = Settings(
            data_dir=scratch / f"group-{count}", models=models, worker_devices=devices
        )
        group = WorkerGroup(settings, devices)
        try:
            for i, (label, plan) in enumerate(entries):
                model = f"split-{i}"
                try:
                    rows.append(_measure(group, model, count, label, plan, request))
                except Exception as exc:  # one split's failure is its row, not the plan's end
                    rows.append({"case": f"{count} devices, {label}", "refused": repr(exc)})
        finally:
            group.stop()
    return rows


def _measure(
    group: Any, model: str, count: int, label: str, plan: ParallelOptions, request: dict
) -> dict[str, Any]:
    from videoserve.worker.rank import RankCall

    group.generate(
        RankCall(model, {**request, "num_inference_steps": 2}), lambda s, t: None, lambda: False
    )  # load, mesh, warm-up: not measured
    stamps: list[float] = []
    begun = time.perf_counter()
    run = group.generate(
        RankCall(model, dict(request)),
        lambda s, t: stamps.append(time.perf_counter()),
        lambda: False,
    )
    total = time.perf_counter() - begun - run.load_seconds
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else None
    peaks = [round(p, 2) for p in run.peak_gb if p is not None]
    return {
        "case": f"{count} devices, {label}",
        "devices": count,
        "split": plan.describe(),
        "steps": request["num_inference_steps"],
        "seconds_per_step": None if per_step is None else round(per_step, 4),
        "call_seconds": round(total, 4),
        "peak_gpu_memory_gb_per_device": peaks or None,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The device rows as one Markdown table."""
    lines = [
        "| devices | split | s / step | call s | peak GB per device |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if "refused" in row:
            lines.append(f"| {row['case']} | | | | refused: {row['refused']} |")
            continue
        peak = row["peak_gpu_memory_gb_per_device"]
        lines.append(
            f"| {row['devices']} | {row['case'].split(', ', 1)[1]} | {row['seconds_per_step']} | "
            f"{row['call_seconds']} | {'n/a' if peak is None else max(peak)} |"
        )
    return "\n".join(lines)
