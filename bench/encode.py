"""Our MP4 encode (media/encode.py: PyAV, libx264) against the FFmpeg command line.

The same raw frames of a smooth synthetic clip (moving sine gradients, the kind of content
a video model makes, unlike the tiny model's noise) go to both: `encode.encode_mp4` in this
process, and `ffmpeg` from Debian reading raw rgb24 frames on stdin, with libx264 at the
same preset and CRF, profile High, yuv420p and +faststart (the CLI's own defaults for
everything else, threads included). Two clips: 832x480x81 at 16 fps (Wan 2.1's output) and
1280x720x121 at 24 fps. Runs alternate, ours then the CLI's, `--repeats` times each; the
medians are reported.

The ratio is OUR time / the CLI's time: 1.00 is as fast, above 1 is slower. The goal
(issue 15) is <= 1.10. Wall time counts the CLI's process start and the pipe; CPU time
(user + system, every thread; for the CLI its child process) is steadier on a shared
machine and is reported beside it.

    python -m bench.encode [--repeats 5] [--preset veryfast] [--crf 20]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from videoserve.media import encode

CLIPS = ((832, 480, 81, 16), (1280, 720, 121, 24))  # width, height, frames, fps


@dataclass(frozen=True)
class Run:
    """One encode: its wall and CPU seconds and the file's size."""

    wall_s: float
    cpu_s: float
    bytes: int


@dataclass(frozen=True)
class Comparison:
    """Medians over the repeats for one clip; ratios are ours / the CLI's (above 1: slower)."""

    clip: str
    ours_wall_s: float
    cli_wall_s: float
    ours_cpu_s: float
    cli_cpu_s: float
    wall_ratio: float
    cpu_ratio: float
    ours_bytes: int
    cli_bytes: int


def smooth_clip(width: int, height: int, frames: int) -> np.ndarray:
    """Moving sine gradients in three channels: smooth, every frame different."""
    t = np.arange(frames, dtype=np.float32)[:, None, None]
    y = np.arange(height, dtype=np.float32)[None, :, None]
    x = np.arange(width, dtype=np.float32)[None, None, :]
    red = 127.5 + 127.5 * np.sin(x / 97 + t / 13)
    green = 127.5 + 127.5 * np.sin(y / 71 - t / 17)
    blue = 127.5 + 127.5 * np.sin((x + y) / 131 + t / 11)
    return np.stack(np.broadcast_arrays(red, green, blue), axis=-1).astype(np.uint8)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ours(frames: np.ndarray, fps: int, path: Path, preset: str, crf: int) -> Run:
    begun, cpu = time.perf_counter(), time.process_time()
    encode.encode_mp4(frames, fps, path, preset=preset, crf=crf, durable=False)
    return Run(time.perf_counter() - begun, time.process_time() - cpu, path.stat().st_size)


def cli(frames: np.ndarray, fps: int, path: Path, preset: str, crf: int) -> Run:
    _, height, width, _ = frames.shape
    command = ["ffmpeg", "-y", "-hide_banner", "-loglevel", "error"]
    command += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps)]
    command += ["-i", "-", "-c:v", "libx264", "-preset", preset, "-crf", str(crf)]
    command += ["-profile:v", "high", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path)]
    raw = memoryview(np.ascontiguousarray(frames)).cast("B")  # no copy of the frames
    begun, cpu = time.perf_counter(), _children_cpu()
    subprocess.run(command, input=raw, check=True)
    return Run(time.perf_counter() - begun, _children_cpu() - cpu, path.stat().st_size)


def compare(width: int, height: int, frames: int, fps: int, args: argparse.Namespace) -> Comparison:
    clip = smooth_clip(width, height, frames)
    mine: list[Run] = []
    theirs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        ours(clip[:5], fps, Path(tmp) / "warm.mp4", args.preset, args.crf)  # loads libx264
        for _ in range(args.repeats):
            mine.append(ours(clip, fps, Path(tmp) / "ours.mp4", args.preset, args.crf))
            theirs.append(cli(clip, fps, Path(tmp) / "cli.mp4", args.preset, args.crf))

    def median(runs: list[Run], field: str) -> float:
        return round(statistics.median(getattr(run, field) for run in runs), 3)

    result = Comparison(
        clip=f"{width}x{height}x{frames}",
        ours_wall_s=median(mine, "wall_s"),
        cli_wall_s=median(theirs, "wall_s"),
        ours_cpu_s=median(mine, "cpu_s"),
        cli_cpu_s=median(theirs, "cpu_s"),
        wall_ratio=0.0,
        cpu_ratio=0.0,
        ours_bytes=mine[-1].bytes,
        cli_bytes=theirs[-1].bytes,
    )
    return Comparison(
        **asdict(result)
        | {
            "wall_ratio": round(result.ours_wall_s / result.cli_wall_s, 3),
            "cpu_ratio": round(result.ours_cpu_s / result.cli_cpu_s, 3),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--preset", default="veryfast")
    parser.add_argument("--crf", type=int, default=20)
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg is not installed (Debian: apt-get install -y ffmpeg)")
    version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout
    results = []
    for width, height, frames, fps in CLIPS:
        results.append(compare(width, height, frames, fps, args))
        print(json.dumps(asdict(results[-1])), flush=True)
    header = ("ours s", "cli s", "wall x", "ours cpu", "cli cpu", "cpu x")
    print(f"{'clip':<15}" + "".join(f"{name:>9}" for name in header))
    for r in results:
        print(
            f"{r.clip:<15}{r.ours_wall_s:>9.3f}{r.cli_wall_s:>9.3f}{r.wall_ratio:>9.2f}"
            f"{r.ours_cpu_s:>9.3f}{r.cli_cpu_s:>9.3f}{r.cpu_ratio:>9.2f}"
        )
    print(
        json.dumps(
            {
                "ratio": "ours / cli (above 1: ours slower; goal <= 1.10)",
                "preset": args.preset,
                "crf": args.crf,
                "repeats": args.repeats,
                "ffmpeg": version.splitlines()[0],
                "clips": [asdict(r) for r in results],
            }
        )
    )


if __name__ == "__main__":
    main()
