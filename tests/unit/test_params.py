"""Every rule of the parameter schemas, and the exact 400 messages they produce."""

from __future__ import annotations

import json
from typing import Any

import pytest

from videoserve import errors
from videoserve.models.params import (
    SIZES,
    AudioDiffusersParams,
    DiffusersParams,
    VideoParams,
    schema_json,
    validate_params,
)

OK = {"prompt": "a cat on a tree"}


def refused(schema: type[VideoParams], raw: object) -> errors.InvalidRequest:
    with pytest.raises(errors.InvalidRequest) as caught:
        validate_params(schema, raw)
    return caught.value


def test_defaults() -> None:
    params = validate_params(VideoParams, OK)
    assert (params.prompt, params.duration, params.size, params.input_reference) == (
        "a cat on a tree",
        8,
        "1280x720",
        None,
    )


@pytest.mark.parametrize(
    ("given", "expected"), [(8, 8), ("8", 8), (4, 4), ("4", 4), ("12", 12), (8.0, 8)]
)
def test_duration_accepts_integer_and_string_forms(given: object, expected: int) -> None:
    assert validate_params(VideoParams, OK | {"duration": given}).duration == expected


@pytest.mark.parametrize(
    ("given", "shown"),
    [(5, "5"), ("5", "'5'"), (8.5, "8.5"), (True, "True"), ("8.0", "'8.0'"), (None, "None")],
)
def test_duration_refused_with_the_allowed_values(given: object, shown: str) -> None:
    error = refused(VideoParams, OK | {"duration": given})
    assert error.message == f"duration: must be one of 4, 8, 12 (got {shown})"
    assert error.param == "duration"


@pytest.mark.parametrize("size", SIZES)
def test_every_valid_size(size: str) -> None:
    assert validate_params(VideoParams, OK | {"size": size}).size == size


@pytest.mark.parametrize(("given", "shown"), [("640x480", "'640x480'"), (1280, "1280")])
def test_bad_size(given: object, shown: str) -> None:
    error = refused(VideoParams, OK | {"size": given})
    assert error.message == (
        f"size: must be one of 720x1280, 1280x720, 1024x1792, 1792x1024 (got {shown})"
    )
    assert error.param == "size"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "prompt: required"),
        ({"duration": 8}, "prompt: required"),
        ({"prompt": ""}, "prompt: must not be empty"),
        ({"prompt": "   \n\t"}, "prompt: must not be empty"),
        ({"prompt": "x" * 4001}, "prompt: must be at most 4000 characters (got 4001)"),
        ({"prompt": 42}, "prompt: must be a string (got number)"),
        ({"prompt": None}, "prompt: must be a string (got null)"),
    ],
)
def test_prompt_rules(raw: dict[str, Any], message: str) -> None:
    error = refused(VideoParams, raw)
    assert error.message == message
    assert error.param == "prompt"


def test_longest_prompt_is_accepted() -> None:
    assert len(validate_params(VideoParams, {"prompt": "x" * 4000}).prompt) == 4000


@pytest.mark.parametrize(
    ("raw", "message", "param"),
    [
        (OK | {"foo": 1}, "unknown parameter(s): foo", "foo"),
        (OK | {"foo": 1, "bar": 2}, "unknown parameter(s): bar, foo", "bar"),
        ({"zeta": 1, "alpha": 2}, "unknown parameter(s): alpha, zeta", "alpha"),
    ],
)
def test_unknown_parameters_named_sorted(raw: object, message: str, param: str) -> None:
    error = refused(VideoParams, raw)
    assert (error.message, error.param) == (message, param)


def test_diffusers_extras_are_unknown_to_the_seed_contract() -> None:
    assert refused(VideoParams, OK | {"seed": 1}).message == "unknown parameter(s): seed"


@pytest.mark.parametrize("raw", [[], "prompt", 42, None, ["prompt"]])
def test_body_must_be_an_object(raw: object) -> None:
    error = refused(VideoParams, raw)
    assert error.message == "request body must be a JSON object"


@pytest.mark.parametrize(
    "reference",
    [
        "https://example.com/cat.png",
        "http://example.com/cat.png?x=1",
        "HTTPS://EXAMPLE.COM/CAT.PNG",
        "data:image/png;base64,iVBORw0KGgo=",
    ],
)
def test_input_reference_accepted(reference: str) -> None:
    assert validate_params(VideoParams, OK | {"input_reference": reference}).input_reference == (
        reference
    )


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("ftp://example.com/cat.png", "must be an http:// or https:// URL or a data: URI"),
        ("file:///etc/passwd", "must be an http:// or https:// URL or a data: URI"),
        ("/tmp/cat.png", "must be an http:// or https:// URL or a data: URI"),
        ("", "must be an http:// or https:// URL or a data: URI"),
        ("https://", "must be an http(s) URL with a host name"),
        ("data:image/png;base64", "must be a data: URI of the form data:<type>[;base64],<data>"),
    ],
)
def test_input_reference_refused(reference: str, message: str) -> None:
    error = refused(VideoParams, OK | {"input_reference": reference})
    assert error.message == f"input_reference: {message}"
    assert error.param == "input_reference"


def test_diffusers_extras_accepted() -> None:
    params = validate_params(
        DiffusersParams,
        OK
        | {
            "seed": 2**32 - 1,
            "negative_prompt": "blurry",
            "num_inference_steps": 100,
            "guidance_scale": 0,
        },
    )
    assert isinstance(params, DiffusersParams)
    assert (params.seed, params.num_inference_steps, params.guidance_scale) == (2**32 - 1, 100, 0.0)
    defaults = validate_params(DiffusersParams, OK)
    assert defaults.seed is defaults.num_inference_steps is defaults.guidance_scale is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("seed", -1, "must be between 0 and 4294967295 (got -1)"),
        ("seed", 2**32, "must be between 0 and 4294967295 (got 4294967296)"),
        ("seed", True, "must be an integer (got True)"),
        ("seed", "abc", "must be an integer (got 'abc')"),
        ("seed", 1.5, "must be an integer (got 1.5)"),
        ("num_inference_steps", 0, "must be between 1 and 100 (got 0)"),
        ("num_inference_steps", 101, "must be between 1 and 100 (got 101)"),
        ("num_inference_steps", False, "must be an integer (got False)"),
        ("guidance_scale", -0.5, "must be between 0 and 20 (got -0.5)"),
        ("guidance_scale", 20.5, "must be between 0 and 20 (got 20.5)"),
        ("guidance_scale", float("nan"), "must be a finite number (got nan)"),
        ("guidance_scale", True, "must be a number (got True)"),
        ("negative_prompt", "x" * 4001, "must be at most 4000 characters (got 4001)"),
        ("negative_prompt", 7, "must be a string (got number)"),
    ],
)
def test_diffusers_extras_ranges(field: str, value: object, message: str) -> None:
    error = refused(DiffusersParams, OK | {field: value})
    assert error.message == f"{field}: {message}"
    assert error.param == field


def test_diffusers_schema_keeps_the_seed_rules() -> None:
    assert refused(DiffusersParams, OK | {"duration": 5}).message == (
        "duration: must be one of 4, 8, 12 (got 5)"
    )


@pytest.mark.parametrize(
    "raw",
    [{}, {"prompt": ""}, OK | {"duration": 5}, OK | {"size": "1x1"}, OK | {"seed": -1}],
)
def test_messages_never_leak_pydantic(raw: dict[str, Any]) -> None:
    message = refused(DiffusersParams, raw).message
    assert "pydantic" not in message and "http" not in message and "Input should" not in message


def test_published_schema() -> None:
    schema = schema_json(VideoParams)
    json.dumps(schema)  # serializable as is
    assert schema["required"] == ["prompt"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"prompt", "duration", "size", "input_reference"}
    prompt = schema["properties"]["prompt"]
    assert (prompt["minLength"], prompt["maxLength"]) == (1, 4000)
    duration = schema["properties"]["duration"]
    assert duration["default"] == 8
    assert {"type": "integer", "enum": [4, 8, 12]} in duration["anyOf"]
    assert {"type": "string", "enum": ["4", "8", "12"]} in duration["anyOf"]
    assert schema["properties"]["size"]["enum"] == list(SIZES)
    assert all(p.get("description") for p in schema["properties"].values())

    extras = schema_json(DiffusersParams)["properties"]
    assert set(extras) - set(schema["properties"]) == {
        "seed",
        "negative_prompt",
        "num_inference_steps",
        "guidance_scale",
    }


# --- sound ----------------------------------------------------------------------------------
def test_audio_is_a_strict_boolean_on_models_with_sound() -> None:
    base = {"prompt": "a cat"}
    assert validate_params(AudioDiffusersParams, base).audio is True  # type: ignore[attr-defined]
    off = validate_params(AudioDiffusersParams, {**base, "audio": False})
    assert off.audio is False  # type: ignore[attr-defined]
    for value, shown in (("yes", "'yes'"), (1, "1"), ("false", "'false'"), (None, "None")):
        with pytest.raises(errors.InvalidRequest) as caught:
            validate_params(AudioDiffusersParams, {**base, "audio": value})
        assert caught.value.message == f"audio: must be true or false (got {shown})"
        assert caught.value.param == "audio"
    # A silent model's schema has no such knob: a 400 naming it.
    with pytest.raises(errors.InvalidRequest, match=r"unknown parameter\(s\): audio"):
        validate_params(DiffusersParams, {**base, "audio": True})
    assert schema_json(AudioDiffusersParams)["properties"]["audio"]["default"] is True
