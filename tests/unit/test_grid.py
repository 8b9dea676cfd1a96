"""The size and duration rule: what each family generates and what it delivers."""

from __future__ import annotations

import pytest

from videoserve import errors
from videoserve.models.grid import (
    TINY_GRID,
    WAN22_TI2V_GRID,
    FamilyGrid,
    GenerationPlan,
    chain_frames,
    plan,
)

TINY_SIZES = {
    # requested: (out w, out h, gen w, gen h)
    "1280x720": (160, 90, 160, 96),
    "720x1280": (90, 160, 96, 160),
    "1024x1792": (128, 224, 128, 224),
    "1792x1024": (224, 128, 224, 128),
}
TINY_FRAMES = {4: (32, 33), 8: (64, 65), 12: (96, 97)}  # duration: (out, gen)

WAN21_LIKE = FamilyGrid(
    multiple=16, frame_rule=4, fps=16, max_frames=81, trained=((832, 480), (480, 832))
)


@pytest.mark.parametrize("size", TINY_SIZES)
@pytest.mark.parametrize("duration", TINY_FRAMES)
def test_tiny_grid(size: str, duration: int) -> None:
    shape = plan(TINY_GRID, size, duration)
    out_w, out_h, gen_w, gen_h = TINY_SIZES[size]
    out_frames, gen_frames = TINY_FRAMES[duration]
    assert shape == GenerationPlan(
        gen_width=gen_w,
        gen_height=gen_h,
        out_width=out_w,
        out_height=out_h,
        gen_frames=gen_frames,
        out_frames=out_frames,
        fps=8,
    )
    assert shape.gen_width % TINY_GRID.multiple == 0
    assert shape.gen_height % TINY_GRID.multiple == 0
    assert shape.out_width % 2 == 0 and shape.out_height % 2 == 0
    assert (shape.gen_frames - 1) % TINY_GRID.frame_rule == 0
    assert shape.out_frames <= shape.gen_frames < shape.out_frames + TINY_GRID.frame_rule
    assert shape.seconds == duration


def test_too_long_duration_is_a_400_naming_the_limit() -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        plan(TINY_GRID, "1280x720", 13)
    assert caught.value.param == "duration"
    assert caught.value.message == (
        "duration: 13s is longer than this model generates in one pass (max 12.1s at 8 fps)"
    )


def test_wan21_like_grid_generates_at_the_trained_size_and_scales_up() -> None:
    # 1280x720 is landscape 16:9: the nearest trained landscape size is 832x480, and the
    # frames are scaled up to the requested 1280x720.
    shape = plan(WAN21_LIKE, "1280x720", 4)
    assert (shape.gen_width, shape.gen_height) == (832, 480)
    assert (shape.out_width, shape.out_height) == (1280, 720)
    assert (shape.out_frames, shape.gen_frames, shape.fps) == (64, 65, 16)
    portrait = plan(WAN21_LIKE, "1024x1792", 4)
    assert (portrait.gen_width, portrait.gen_height) == (480, 832)
    assert (portrait.out_width, portrait.out_height) == (1024, 1792)


def test_wan21_like_grid_refuses_8s_in_one_pass() -> None:
    # 8 s at 16 fps is 128 frames; one pass holds 81 (5.1 s).
    with pytest.raises(errors.InvalidRequest) as caught:
        plan(WAN21_LIKE, "1280x720", 8)
    assert caught.value.message == (
        "duration: 8s is longer than this model generates in one pass (max 5.1s at 16 fps)"
    )


def test_nearest_aspect_among_several_trained_sizes() -> None:
    grid = FamilyGrid(
        multiple=16,
        frame_rule=4,
        fps=16,
        max_frames=81,
        trained=((832, 480), (1280, 720), (480, 832), (720, 1280), (960, 960)),
    )
    assert (plan(grid, "1280x720", 4).gen_width, plan(grid, "1280x720", 4).gen_height) == (
        1280,
        720,
    )
    tall = plan(grid, "1024x1792", 4)  # 0.571: 480x832 (0.577) is nearer than 720x1280 (0.5625)
    assert (tall.gen_width, tall.gen_height) == (480, 832)


def test_untrained_grid_rounds_up_to_the_multiple() -> None:
    grid = FamilyGrid(multiple=32, frame_rule=8, fps=10, max_frames=200)
    shape = plan(grid, "1280x720", 4)
    assert (shape.gen_width, shape.gen_height) == (1280, 736)
    assert (shape.out_width, shape.out_height) == (1280, 720)
    assert (shape.out_frames, shape.gen_frames) == (40, 41)  # 8k+1


def test_wan22_ti2v_grid() -> None:
    shape = plan(WAN22_TI2V_GRID, "720x1280", 4)
    assert (shape.gen_width, shape.gen_height) == (704, 1280)
    assert (shape.out_frames, shape.gen_frames) == (96, 97)


def test_malformed_size_is_refused() -> None:
    with pytest.raises(errors.InvalidRequest):
        plan(TINY_GRID, "bogus", 4)


# --- chaining: a duration over one pass, where the model does image-to-video ----------------
def delivered(counts: tuple[int, ...]) -> int:
    """Frames a chain delivers: every later pass drops its first (the conditioning frame)."""
    return counts[0] + sum(c - 1 for c in counts[1:])


def test_chain_is_refused_unless_asked() -> None:
    assert plan(WAN22_TI2V_GRID, "1280x720", 4, chain=True).segments == 1
    with pytest.raises(errors.InvalidRequest) as caught:
        plan(WAN22_TI2V_GRID, "1280x720", 8)
    assert caught.value.message == (
        "duration: 8s is longer than this model generates in one pass (max 5.0s at 24 fps)"
    )


@pytest.mark.parametrize(("duration", "counts"), [(4, (97,)), (8, (97, 97)), (12, (97, 97, 97))])
def test_wan22_ti2v_chains_8_and_12_seconds(duration: int, counts: tuple[int, ...]) -> None:
    shape = plan(WAN22_TI2V_GRID, "720x1280", duration, chain=True)
    assert shape.segment_frames == counts and shape.segments == len(counts)
    assert (shape.gen_width, shape.gen_height, shape.out_width, shape.out_height) == (
        704,
        1280,
        720,
        1280,
    )
    assert shape.out_frames == duration * 24 and shape.seconds == duration
    assert delivered(counts) >= shape.out_frames


def test_tiny_grid_with_a_small_max_frames_takes_three_passes() -> None:
    grid = FamilyGrid(multiple=32, frame_rule=4, fps=8, max_frames=13, scale=1 / 8)
    shape = plan(grid, "1280x720", 4, chain=True)
    assert shape.segment_frames == (13, 13, 9)  # 13 + 12 + 8 = 33, one trimmed
    assert shape.out_frames == 32


@pytest.mark.parametrize("rule", [4, 8])
@pytest.mark.parametrize("max_frames", [9, 13, 17, 40, 81, 121, 257])
@pytest.mark.parametrize("frames", [1, 2, 8, 32, 96, 100, 192, 288, 1000])
def test_chain_frames_obey_the_rule_and_cover_with_the_fewest_passes(
    rule: int, max_frames: int, frames: int
) -> None:
    longest = (max_frames - 1) // rule * rule + 1
    counts = tuple(chain_frames(frames, longest, rule))
    assert all(c <= longest and (c - 1) % rule == 0 for c in counts)
    assert frames <= delivered(counts) < frames + rule  # trimmed: less than one rule's worth
    fewer = len(counts) - 1
    assert fewer == 0 or longest + (fewer - 1) * (longest - 1) < frames  # no fewer would do
    assert list(counts[:-1]) == [counts[0]] * (len(counts) - 1)  # even, the last one shorter
    assert counts[-1] <= counts[0]
