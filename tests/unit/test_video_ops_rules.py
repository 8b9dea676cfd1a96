"""Pure rules of the video operations: poll hints, mention parsing, container sniffing, the
edit strength, and the input manifest's round trip."""

from __future__ import annotations

import pytest

from videoserve import errors
from videoserve.api.routes.openai import POLL_CEILING_MS, POLL_FLOOR_MS, poll_after_ms
from videoserve.jobs.inputs import InputKind, JobInput, JobInputs, Operation
from videoserve.jobs.records import Job
from videoserve.jobs.states import Status
from videoserve.media.video_input import sniff_container
from videoserve.services.characters import mentions
from videoserve.services.video_ops import _strength
from videoserve.settings import Settings


def job(status: Status, progress: int = 0, started_at: float | None = None) -> Job:
    return Job(
        id="video_x",
        api_key_id="k",
        model="m",
        served_by="m",
        params={},
        status=status,
        progress=progress,
        attempt=1,
        max_attempts=3,
        created_at=1000.0,
        started_at=started_at,
    )


def test_poll_hint_follows_the_jobs_state_and_never_goes_below_the_floor() -> None:
    settings = Settings(poll_interval_seconds=0.1)
    assert poll_after_ms(job(Status.QUEUED), settings) == 2 * POLL_FLOOR_MS
    # 10 s for 10 %: 90 s left, polled every quarter of it, capped.
    slow = poll_after_ms(job(Status.PROCESSING, 10, 1000.0), settings, now=1010.0)
    assert slow == POLL_CEILING_MS
    # 1 s for 50 %: 1 s left -> 250 ms.
    assert poll_after_ms(job(Status.PROCESSING, 50, 1000.0), settings, now=1001.0) == 250
    # Nearly done after a moment: the floor, not less.
    assert poll_after_ms(job(Status.PROCESSING, 99, 1000.0), settings, now=1000.1) == POLL_FLOOR_MS
    # A server that re-checks jobs less often raises the floor.
    patient = Settings(poll_interval_seconds=2.0)
    assert poll_after_ms(job(Status.PROCESSING, 99, 1000.0), patient, now=1000.1) == 2000


def test_mentions_are_names_not_addresses() -> None:
    assert mentions("@Mara meets @Tom_2, then @Mara again") == ["Mara", "Tom_2"]
    assert mentions("write to me@example.com or @@odd") == []


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x00\x00\x00\x18ftypmp42", "mp4"),
        (b"\x00\x00\x00\x08wide....", "mp4"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", "webm"),
        (b"#EXTM3U\nhttp://x/", None),  # a playlist would make FFmpeg open URLs
        (b"\x89PNG\r\n\x1a\n", None),
        (b"", None),
    ],
)
def test_only_mp4_mov_and_webm_are_opened(head: bytes, kind: str | None) -> None:
    assert sniff_container(head) == kind


@pytest.mark.parametrize("value", ["0", 0, "1.01", -1, "lots", True])
def test_strength_must_be_in_range(value: object) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        _strength(value)
    assert caught.value.param == "strength"


def test_strength_default_and_form_string() -> None:
    assert _strength(None) == 0.6 and _strength("0.25") == 0.25 and _strength(1) == 1.0


def test_manifest_round_trip_and_totals() -> None:
    inputs = JobInputs(
        Operation.EXTEND,
        inputs=(JobInput(InputKind.VIDEO, "jobs/v/inputs/source.mp4", "video/mp4"),),
        source_video_id="video_a",
        source_seconds=2.5,
    )
    again = JobInputs.from_json(inputs.to_json())
    assert again == inputs
    assert again.total_seconds(4) == 6.5
    assert JobInputs(Operation.EDIT, source_seconds=2.5).total_seconds(4) == 2.5
