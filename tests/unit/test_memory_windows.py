"""The in-memory moving window behind the rate limits: exact counts, a sliding edge, the
tightest of several limits, and memory that follows the active callers."""

from __future__ import annotations

from limits import parse, parse_many

from videoserve.api.ratelimit import MemoryWindows


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_exactly_the_limit_passes_then_the_window_slides() -> None:
    clock = Clock()
    windows = MemoryWindows(clock)
    item = [parse("3/minute")]
    remaining = []
    for _ in range(3):
        verdict = windows.hit(item, "status", "key:a")
        assert verdict.allowed
        remaining.append(verdict.remaining)
        clock.now += 10
    assert remaining == [2, 1, 0]
    refused = windows.hit(item, "status", "key:a")
    assert not refused.allowed and refused.remaining == 0
    assert refused.reset_at == 1_000_000.0 + 60  # when the first call leaves the window
    clock.now = 1_000_000.0 + 60  # the first call is at the window's edge: still counted
    assert not windows.hit(item, "status", "key:a").allowed
    clock.now += 0.001  # now it has left: one slot frees, and only one
    assert windows.hit(item, "status", "key:a").allowed
    assert not windows.hit(item, "status", "key:a").allowed


def test_callers_and_buckets_are_counted_apart() -> None:
    windows = MemoryWindows(Clock())
    item = [parse("1/minute")]
    assert windows.hit(item, "status", "key:a").allowed
    assert windows.hit(item, "status", "key:b").allowed
    assert windows.hit(item, "submit", "key:a").allowed
    assert not windows.hit(item, "status", "key:a").allowed


def test_the_tightest_limit_answers_and_a_refusal_counts_nothing() -> None:
    clock = Clock()
    windows = MemoryWindows(clock)
    items = parse_many("2/second;3/minute")
    assert windows.hit(items, "status", "k").remaining == 1  # 2/second: 1 left, 3/minute: 2
    assert windows.hit(items, "status", "k").remaining == 0
    assert not windows.hit(items, "status", "k").allowed  # the per-second limit refuses
    clock.now += 1.5
    last = windows.hit(items, "status", "k")  # the refusal above spent no minute slot
    assert last.allowed and last.remaining == 0 and str(last.item) == str(items[1])
    clock.now += 1.5
    refused = windows.hit(items, "status", "k")
    assert not refused.allowed and str(refused.item) == str(items[1])


def test_callers_who_stopped_are_swept() -> None:
    clock = Clock()
    windows = MemoryWindows(clock)
    item = [parse("5/minute")]
    for caller in range(100):
        windows.hit(item, "status", f"ip:{caller}")
    assert len(windows) == 100
    clock.now += MemoryWindows.SWEEP_SECONDS + 1  # every call has left its window
    windows.hit(item, "status", "ip:new")
    assert len(windows) == 1
