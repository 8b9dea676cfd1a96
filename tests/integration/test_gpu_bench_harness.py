"""The GPU benchmark's harness runs end to end on the CPU at toy sizes, so it is known to work
before GPU time is spent on it; the GPU figures themselves are measured on a GPU host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PHASES = {
    "text_encoding",
    "denoising",
    "vae_decode",
    "mp4_encode",
    "other",
    "total",
    "mp4_encode_exposed",
    "per_video_wall",
}
DENOISER = {
    "tokens",
    "text_tokens",
    "forwards",
    "samples",
    "tflop_per_sample_forward",
    "tflop",
    "achieved_tflops",
}


def bench(*args: str, timeout: float = 300) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_pipeline", "--tiny", "--device", "cpu", *args],
        cwd=ROOT,
        # This tree's source first: an editable install elsewhere must not answer the import.
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    "mode", [[], ["--plain"], ["--batch-cfg", "on"]], ids=["ours", "plain", "ours-batched-cfg"]
)
def test_tiny_run_reports_every_phase(mode: list[str], tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    report = bench(
        "--threads", "1", "--videos", "1", "--cache", "first_block", "--out", str(out), *mode
    )
    assert json.loads(out.read_text()) == report
    assert report["mode"] == ("plain" if "--plain" in mode else "ours") and report["tiny"]
    assert {"device", "gpu", "torch", "diffusers", "peak_rss_gb"} <= set(report)
    assert [r["model"] for r in report["results"]] == [
        "wan2.1-t2v-1.3b",
        "wan2.2-ti2v-5b",
        "ltx-video-2b",
    ]
    for result in report["results"]:
        assert set(result["seconds"]) == PHASES
        assert all(result["seconds"][phase] > 0 for phase in ("text_encoding", "denoising"))
        assert result["seconds"]["vae_decode"] > 0 and result["seconds"]["mp4_encode"] > 0
        assert set(result["denoiser"]) == DENOISER
        assert result["denoiser"]["tflop"] > 0 and result["denoiser"]["achieved_tflops"] > 0
        assert result["peak_gpu_memory_gb"] is None  # no GPU here
        assert result["cache"] == "first_block" and result["steps"] == 2
        # CFG: LTX runs one forward with a batch of two per step; Wan runs two forwards,
        # or one batch of two with our batched CFG (on by default on a GPU only).
        batched = result["model"].startswith("ltx") or "--batch-cfg" in mode
        expected = (2, 4) if batched else (4, 4)
        assert (result["denoiser"]["forwards"], result["denoiser"]["samples"]) == expected
        assert result["cfg_batched"] is batched


def test_flop_count_of_wan21_at_its_native_shape() -> None:
    from bench.gpu_pipeline import FULL, denoiser_flops

    # 832x480x81: 21 latent frames x 30 x 52 patches; 512 text tokens.
    tflop = denoiser_flops(FULL["wan2.1-t2v-1.3b"], 21 * 30 * 52, 512) / 1e12
    assert tflop == pytest.approx(283, rel=0.01)


def test_plan_runs_every_case_or_says_why_not(tmp_path: Path) -> None:
    from bench.gpu_pipeline import ATTENTION_BACKENDS
    from bench.plan import cases

    report = bench("--plan", "--threads", "1", timeout=900)
    rows = {row["case"]: row for row in report["rows"]}
    assert list(rows) == [case.label for case in cases(ATTENTION_BACKENDS)]
    measured = [row for row in report["rows"] if "refused" not in row]
    for row in measured:
        assert set(row["seconds"]) == {"load", "text_encoding", "denoising", "vae_decode", "call"}
        assert row["seconds"]["denoising"] > 0 and row["achieved_tflops"] > 0
        assert row["peak_gpu_memory_gb"] is None  # no GPU here
    # CFG: two forwards a step, or one batch of two; the few-step LoRA entry runs without CFG.
    assert (rows["diffusers plain"]["forwards"], rows["diffusers plain"]["samples"]) == (16, 16)
    assert (rows["videoserve"]["forwards"], rows["videoserve"]["samples"]) == (16, 16)
    assert rows["videoserve, batched CFG"]["forwards"] == 8
    assert (rows["4-step LoRA entry"]["forwards"], rows["4-step LoRA entry"]["steps"]) == (4, 4)
    # What this CPU host cannot run is refused with the reason, as startup refuses it.
    assert "needs an NVIDIA GPU" in rows["+ quantize fp8"]["refused"]
    assert "is a CUDA kernel" in rows["+ attention _native_cudnn"]["refused"]
    assert "flash-attn" in rows["+ attention flash"]["refused"]
    assert "refused" not in rows["+ compile regional"]  # inductor on the CPU
    assert "refused" not in rows["+ quantize int8_weight_only"]
    # NVENC asked, libx264 ran (no NVIDIA driver here).
    assert [(e["asked"], e["ran"]) for e in report["encoders"]] == [
        ("libx264", "libx264"),
        ("h264_nvenc", "libx264"),
    ]
    assert report["table"].startswith("| case | load s |")


def test_plan_runs_worker_group_rows_on_two_cpu_ranks() -> None:
    # The single-device rows are skipped here (the test above runs them): only the group's.
    skip = "diffusers plain,videoserve,+ ,LoRA"
    report = bench("--plan", "--threads", "1", "--plan-devices", "2", "--plan-skip", skip)
    splits = [row["split"] for row in report["devices"]]
    assert splits == [
        {"ranks": 2, "ulysses": 2},
        {"ranks": 2, "ring": 2},
        {"ranks": 2, "cfg": 2},
    ]
    for row in report["devices"]:
        assert row["seconds_per_step"] > 0 and row["call_seconds"] > 0
        assert row["peak_gpu_memory_gb_per_device"] is None  # no GPU here
    assert "| devices | split | s / step |" in report["table"]
