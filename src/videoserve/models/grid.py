"""How a requested size and duration become what a model family actually generates.

Every family has a grid: the resolutions it was trained at, the multiple its latent patches
need, the frame counts its VAE accepts (`rule*k + 1`), its native frame rate and how many frames
one pass may hold. `plan` is the one rule that maps the public `size`/`duration` onto it; the
tables here describe the families we ship. A duration longer than one pass is chained (segments
of image-to-video from the previous segment's last frame) where the model can, else refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from videoserve import errors


@dataclass(frozen=True)
class FamilyGrid:
    """What a model family can generate."""

    multiple: int  # height and width must be multiples of this (VAE stride x patch size)
    frame_rule: int  # frame counts are frame_rule*k + 1 (the VAE's temporal stride)
    fps: int  # frames per second of the output; duration*fps frames are delivered
    max_frames: int  # most frames one pass generates
    trained: tuple[tuple[int, int], ...] = ()  # (width, height) it was trained at; () = any
    scale: float = 1.0  # the requested size is scaled by this first (the tiny model: 1/8)


@dataclass(frozen=True)
class GenerationPlan:
    """The sizes and frame counts of one generation: what the pipeline makes, what we deliver."""

    gen_width: int
    gen_height: int
    out_width: int
    out_height: int
    gen_frames: int  # frames the first pass generates
    out_frames: int
    fps: int
    # Frames each later pass generates: image-to-video from the previous pass's last frame,
    # whose re-rendering (its own first frame) is dropped. () for a single pass.
    later_frames: tuple[int, ...] = ()

    @property
    def seconds(self) -> float:
        return self.out_frames / self.fps

    @property
    def segment_frames(self) -> tuple[int, ...]:
        """The frame count of every pass, in order."""
        return (self.gen_frames, *self.later_frames)

    @property
    def segments(self) -> int:
        return 1 + len(self.later_frames)


# The tiny test model: any size on a 32 grid, an eighth of the requested size, 8 fps.
TINY_GRID = FamilyGrid(multiple=32, frame_rule=4, fps=8, max_frames=97, scale=1 / 8)

# Wan 2.1 T2V 1.3B (and 14B at 480p): 16 fps, 81 frames (5 s) per pass.
WAN21_GRID = FamilyGrid(
    multiple=16, frame_rule=4, fps=16, max_frames=81, trained=((832, 480), (480, 832))
)
# Wan 2.1 T2V 14B and Wan 2.2 A14B at 720p.
WAN_720P_GRID = FamilyGrid(
    multiple=16, frame_rule=4, fps=16, max_frames=81, trained=((1280, 720), (720, 1280))
)
# Wan 2.2 TI2V 5B: 16x spatial VAE with 2x2 patches, 24 fps, 121 frames per pass.
WAN22_TI2V_GRID = FamilyGrid(
    multiple=32, frame_rule=4, fps=24, max_frames=121, trained=((1280, 704), (704, 1280))
)

# LTX-Video 0.9.x: a 32x spatial VAE with 1x1 patches, 8x temporal. The LTX-Video README: sides
# "divisible by 32", frames "divisible by 8 + 1 (e.g. 257)", "works best ... below 720 x 1280 and
# ... 257" frames. diffusers' LTX-Video docs: 768x512, exported at fps=24 (the pipeline's own
# `frame_rate` default is 25; we pass the delivered rate, since it scales the temporal RoPE).
LTX_VIDEO_GRID = FamilyGrid(
    multiple=32, frame_rule=8, fps=24, max_frames=257, trained=((768, 512), (512, 768))
)

# LTX-2 (2.0-2.5): the same 32x spatial / 8x temporal VAE grid as LTX-Video (diffusers'
# `LTX2Pipeline`: sides multiples of 32, frames 8k+1), any size on it (the pipeline's examples
# run 768x512 and 1280x704), 24 fps (its `frame_rate` default), and up to 20 s in one pass (the
# pipeline's own `max_seconds` bound): 481 frames. 4, 8 and 12 s all fit one pass.
LTX2_GRID = FamilyGrid(multiple=32, frame_rule=8, fps=24, max_frames=481)

# HunyuanVideo 1.5: a 16x spatial / 4x temporal VAE with 1x1 patches (sides multiples of 16,
# frames 4k+1), 24 fps and 121 frames a pass (its README: `--video_length` default 121,
# `export_to_video(..., fps=24)`). Trained sizes: the pipeline's own buckets around its
# `target_size` (640 for 480p, 960 for 720p) for the seed's aspect ratios, i.e. what
# `HunyuanVideo15ImageProcessor.calculate_default_height_width` picks for them.
HUNYUAN15_480P_GRID = FamilyGrid(
    multiple=16,
    frame_rule=4,
    fps=24,
    max_frames=121,
    trained=((848, 480), (480, 848), (832, 480), (480, 832)),
)
HUNYUAN15_720P_GRID = FamilyGrid(
    multiple=16,
    frame_rule=4,
    fps=24,
    max_frames=121,
    trained=((1280, 720), (720, 1264), (1248, 720), (720, 1248)),
)

FAMILY_GRIDS: dict[str, FamilyGrid] = {
    "tiny": TINY_GRID,
    "wan2.1": WAN21_GRID,
    "wan2.1-720p": WAN_720P_GRID,
    "wan2.2-a14b": WAN_720P_GRID,
    "wan2.2-ti2v": WAN22_TI2V_GRID,
    "ltx-video": LTX_VIDEO_GRID,
    "ltx-2": LTX2_GRID,
    "hunyuan-1.5-480p": HUNYUAN15_480P_GRID,
    "hunyuan-1.5-720p": HUNYUAN15_720P_GRID,
}


def parse_size(size: str) -> tuple[int, int]:
    """`"1280x720"` -> `(1280, 720)`."""
    width, sep, height = size.partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or not int(width) or not int(height):
        raise errors.InvalidRequest(f"size: {size!r} is not of the form WIDTHxHEIGHT", param="size")
    return int(width), int(height)


def plan(grid: FamilyGrid, size: str, duration: int, *, chain: bool = False) -> GenerationPlan:
    """Map a requested `size` and `duration` onto `grid`, or refuse a duration it cannot make.

    The rule:
    1. Target = the requested size times `grid.scale`, each side rounded to an even number
       (H.264 needs even sides).
    2. Generate at the trained resolution with the same orientation and the nearest aspect
       ratio; a family with no trained list generates at the target rounded up to
       `grid.multiple`.
    3. Deliver the requested size when `scale` is 1 (frames are scaled to it, cropping the few
       pixels where the aspect ratios differ), else the scaled target.
    4. Deliver exactly `duration * fps` frames, so the video lasts `duration` seconds. Generate
       the smallest `frame_rule*k + 1` count that covers them and drop the extra frames.
    5. A count over `max_frames` is refused (400) unless `chain` (the model does image-to-video
       with the same weights): then the fewest passes that cover it (`chain_frames`), each
       later one continuing from the previous pass's last frame.
    """
    width, height = parse_size(size)
    out_width, out_height = _even(width * grid.scale), _even(height * grid.scale)
    if grid.trained:
        gen_width, gen_height = _nearest_trained(grid.trained, out_width, out_height)
    else:
        gen_width, gen_height = (
            _round_up(out_width, grid.multiple),
            _round_up(out_height, grid.multiple),
        )
    if grid.scale == 1.0:
        out_width, out_height = width, height

    out_frames = duration * grid.fps
    gen_frames = _frames_covering(out_frames, grid.frame_rule)
    later: tuple[int, ...] = ()
    longest = _frames_within(grid.max_frames, grid.frame_rule)
    if gen_frames > grid.max_frames and chain and longest > 1:
        gen_frames, *rest = chain_frames(out_frames, longest, grid.frame_rule)
        later = tuple(rest)
    elif gen_frames > grid.max_frames:
        raise errors.InvalidRequest(
            f"duration: {duration}s is longer than this model generates in one pass "
            f"(max {max_seconds(grid):.1f}s at {grid.fps} fps)",
            param="duration",
        )
    return GenerationPlan(
        gen_width=gen_width,
        gen_height=gen_height,
        out_width=out_width,
        out_height=out_height,
        gen_frames=gen_frames,
        out_frames=out_frames,
        fps=grid.fps,
        later_frames=later,
    )


def chain_frames(frames: int, longest: int, rule: int) -> list[int]:
    """The frame counts of the fewest passes of at most `longest` frames that deliver `frames`.

    A later pass of `g` frames adds `g - 1`: its first frame re-renders the previous pass's
    last. The passes are as even as the rule allows (the seams are then evenly spaced and no
    pass is a stub), the last one only as long as what is left needs.
    """
    if frames <= longest:
        return [_frames_covering(frames, rule)]
    passes = 1 + math.ceil((frames - longest) / (longest - 1))
    # The shortest even pass that covers: g + (passes - 1) * (g - 1) >= frames.
    even = _frames_covering(math.ceil((frames + passes - 1) / passes), rule)
    counts = [min(even, longest)] * (passes - 1)
    left = frames - counts[0] - sum(c - 1 for c in counts[1:])
    counts.append(_frames_covering(left + 1, rule))
    return counts


def max_seconds(grid: FamilyGrid) -> float:
    """The longest video one pass of `grid` makes, in seconds."""
    return _frames_within(grid.max_frames, grid.frame_rule) / grid.fps


def _even(value: float) -> int:
    return max(2, 2 * math.floor(value / 2 + 0.5))


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, math.ceil(value / multiple) * multiple)


def _frames_covering(frames: int, rule: int) -> int:
    """The smallest `rule*k + 1` that is at least `frames`."""
    return max(0, math.ceil((frames - 1) / rule)) * rule + 1


def _frames_within(frames: int, rule: int) -> int:
    """The largest `rule*k + 1` that is at most `frames`."""
    return max(0, (frames - 1) // rule) * rule + 1


def _nearest_trained(
    trained: tuple[tuple[int, int], ...], width: int, height: int
) -> tuple[int, int]:
    """The trained resolution of the same orientation whose aspect ratio is nearest."""
    landscape = width >= height
    same = [wh for wh in trained if (wh[0] >= wh[1]) == landscape] or list(trained)
    aspect = math.log(width / height)
    return min(same, key=lambda wh: (abs(math.log(wh[0] / wh[1]) - aspect), -wh[0] * wh[1]))
