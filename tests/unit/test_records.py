"""The typed records read from the job database: a stored result round-trips, older rows and
newer writers' keys are read without loss, and an inline image never shows as data."""

from __future__ import annotations

from videoserve.jobs.records import INLINE_IMAGE_NOTE, Job, JobResult
from videoserve.jobs.states import Status

RESULT = JobResult("jobs/v/1/video.mp4", "jobs/v/1/thumb.jpg", "tiny-t2v", 64, 64, 8.0, 17, 2.125)


def job(**changes: object) -> Job:
    values: dict = {
        "id": "video_1",
        "api_key_id": "key_a",
        "model": "sora-2-pro",
        "served_by": "tiny-t2v",
        "params": {"prompt": "a cat", "duration": 4},
        "status": Status.COMPLETED,
        "progress": 100,
        "attempt": 1,
        "max_attempts": 2,
        "created_at": 0.0,
    }
    return Job(**(values | changes))


def test_a_result_round_trips_through_its_json() -> None:
    assert JobResult.from_json(RESULT.to_json(), served_by="other") == RESULT


def test_an_older_row_gets_the_jobs_served_by_and_newer_keys_pass_through() -> None:
    stored = RESULT.to_json()
    del stored["served_by"]
    stored["subtitles_key"] = "jobs/v/1/captions.vtt"  # a key a newer worker wrote
    read = JobResult.from_json(stored, served_by="wan-2.1")
    assert read.served_by == "wan-2.1" and read.extra == {"subtitles_key": "jobs/v/1/captions.vtt"}
    assert read.to_json()["subtitles_key"] == "jobs/v/1/captions.vtt"


def test_a_row_from_before_sound_reads_as_silent_and_sound_round_trips() -> None:
    stored = RESULT.to_json()
    for key in ("has_audio", "audio_sample_rate", "audio_codec"):
        del stored[key]
    old = JobResult.from_json(stored, served_by="tiny-t2v")
    assert (old.has_audio, old.audio_sample_rate, old.audio_codec) == (False, None, None)
    assert old.extra == {}
    sound = JobResult(
        **{**stored, "has_audio": True, "audio_sample_rate": 24000, "audio_codec": "aac"}
    )
    assert JobResult.from_json(sound.to_json(), served_by="other") == sound


def test_an_inline_image_shows_as_a_note_and_a_url_as_sent() -> None:
    inline = job(input_key="jobs/video_1/input.png")
    assert inline.shown_params()["input_reference"] == INLINE_IMAGE_NOTE
    assert "input_reference" not in inline.params  # never stored in the row
    url = "https://example.com/cat.png"
    by_url = job(input_key="jobs/video_1/input.png", params={"prompt": "a", "input_reference": url})
    assert by_url.shown_params()["input_reference"] == url
    assert "input_reference" not in job().shown_params()
    # An edit's, an extension's or a character's inputs are a manifest, not an image.
    assert "input_reference" not in job(input_key="jobs/video_1/inputs.json").shown_params()
