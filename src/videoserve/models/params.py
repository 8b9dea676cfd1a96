"""Parameter schemas of the models, and their validation into precise 400 messages.

`VideoParams` is the seed's `sora-2-pro` contract, exactly; every model accepts at least that.
`DiffusersParams` adds the knobs a local diffusion model understands. `validate_params` is the
one entry point the API uses: it turns pydantic's errors into one human sentence naming the
field, so a client sees `duration: must be one of 4, 8, 12 (got 5)` and never a pydantic URL.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import ErrorDetails

from videoserve import errors

MAX_PROMPT_CHARS = 4000
DURATIONS = (4, 8, 12)
SIZES = ("720x1280", "1280x720", "1024x1792", "1792x1024")
SEED_MAX = 2**32 - 1

Duration = Literal[4, 8, 12]
Size = Literal["720x1280", "1280x720", "1024x1792", "1792x1024"]


def _one_of(allowed: tuple[object, ...], value: object) -> str:
    return f"must be one of {', '.join(str(a) for a in allowed)} (got {value!r})"


def _coerce_duration(value: object) -> object:
    """Accept 4/8/12 and their string forms (the seed's example sends "8"), nothing else.

    Booleans are refused even though `True == 1` in Python, and 8.0 is taken as 8 because JSON
    does not distinguish them; 8.5 or "8.0" are refused.
    """
    if isinstance(value, bool):
        raise ValueError(_one_of(DURATIONS, value))
    if isinstance(value, int) and value in DURATIONS:
        return value
    if isinstance(value, float) and value.is_integer() and int(value) in DURATIONS:
        return int(value)
    if isinstance(value, str) and value in {str(d) for d in DURATIONS}:
        return int(value)
    raise ValueError(_one_of(DURATIONS, value))


def _refuse_bool_integer(value: object) -> object:
    """Refuse JSON `true`/`false` where an integer is expected (pydantic would read 1/0)."""
    if isinstance(value, bool):
        raise ValueError(f"must be an integer (got {value!r})")
    return value


def _refuse_bool_number(value: object) -> object:
    """Refuse JSON `true`/`false` where a number is expected (pydantic would read 1.0/0.0)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number (got {value!r})")
    return value


DurationField = Annotated[
    Duration,
    BeforeValidator(_coerce_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "enum": list(DURATIONS)},
                {"type": "string", "enum": [str(d) for d in DURATIONS]},
            ]
        }
    ),
]


class VideoParams(BaseModel):
    """The `sora-2-pro` parameters: what every model accepts, and all `sora-2-pro` accepts."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "prompt": "A druid walks through a misty forest at sunset",
                    "duration": "8",
                    "size": "1280x720",
                }
            ]
        },
    )

    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="What the video shows. Required, not blank, at most 4000 characters.",
        examples=["A druid walks through a misty forest at sunset, cinematic lighting"],
    )
    duration: DurationField = Field(
        default=8,
        description="Length of the video in seconds: 4, 8 or 12 (the string forms are accepted).",
        examples=[8],
    )
    size: Size = Field(
        default="1280x720",
        description="Output resolution, width x height in pixels.",
        examples=["1280x720"],
    )
    input_reference: str | None = Field(
        default=None,
        description=(
            "Optional image used as the first frame / visual guide: an http(s) URL or a data: URI."
        ),
        examples=["https://example.com/first-frame.png"],
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("input_reference")
    @classmethod
    def _reference_is_uri(cls, value: str | None) -> str | None:
        # Syntax only: fetching (and refusing private addresses) is the media layer's job.
        if value is None:
            return None
        lowered = value[:8].lower()
        if lowered.startswith("data:"):
            if "," not in value:
                raise ValueError("must be a data: URI of the form data:<type>[;base64],<data>")
            return value
        if lowered.startswith(("http://", "https://")):
            try:
                host = urlsplit(value).hostname
            except ValueError:
                host = None
            if not host:
                raise ValueError("must be an http(s) URL with a host name")
            return value
        raise ValueError("must be an http:// or https:// URL or a data: URI")


class DiffusersParams(VideoParams):
    """`VideoParams` plus the controls of a local diffusion model."""

    seed: Annotated[int | None, BeforeValidator(_refuse_bool_integer)] = Field(
        default=None,
        ge=0,
        le=SEED_MAX,
        description="Random seed; the same seed gives the same video on the same hardware.",
        examples=[42],
    )
    negative_prompt: str | None = Field(
        default=None,
        max_length=MAX_PROMPT_CHARS,
        description="What the video should avoid; at most 4000 characters.",
        examples=["blurry, low quality, watermark"],
    )
    num_inference_steps: Annotated[int | None, BeforeValidator(_refuse_bool_integer)] = Field(
        default=None,
        ge=1,
        le=100,
        description="Denoising steps; more is slower and usually cleaner. Default: the model's.",
        examples=[30],
    )
    guidance_scale: Annotated[float | None, BeforeValidator(_refuse_bool_number)] = Field(
        default=None,
        ge=0,
        le=20,
        allow_inf_nan=False,
        description="How strongly to follow the prompt. Default: the model's.",
        examples=[5.0],
    )


class AudioDiffusersParams(DiffusersParams):
    """`DiffusersParams` of a model that makes sound: the sound can be switched off."""

    audio: bool = Field(
        default=True,
        strict=True,
        description=(
            "Put the model's synchronized sound in the MP4 as an AAC track (default true); "
            "false gives a silent file."
        ),
        examples=[True],
    )


def validate_params(schema: type[VideoParams], raw: object) -> VideoParams:
    """Parse a request body into `schema`, or raise one `InvalidRequest` a human can act on."""
    if not isinstance(raw, dict):
        raise errors.InvalidRequest("request body must be a JSON object")
    unknown = sorted(str(key) for key in raw if key not in schema.model_fields)
    if unknown:
        raise errors.InvalidRequest(f"unknown parameter(s): {', '.join(unknown)}", param=unknown[0])
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        message = _describe(schema, first)
        raise errors.InvalidRequest(
            f"{field}: {message}" if field else message, param=field
        ) from None


def schema_json(schema: type[VideoParams]) -> dict[str, Any]:
    """The JSON schema published for a model in `GET /v1/models` and OpenAPI."""
    return schema.model_json_schema(mode="validation")


def _describe(schema: type[VideoParams], error: ErrorDetails) -> str:
    """One short phrase for one pydantic error, without pydantic's wording or URLs."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind == "missing":
        return "required"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        got = len(value) if isinstance(value, str) else "?"
        return f"must be at most {ctx.get('max_length')} characters (got {got})"
    if kind == "bool_type":
        return f"must be true or false (got {value!r})"
    if kind == "string_type":
        return f"must be a string (got {_kind_of(value)})"
    if kind == "literal_error":
        allowed = _literal_values(schema, error["loc"])
        if allowed:
            return _one_of(allowed, value)
        return f"must be one of {ctx.get('expected')} (got {value!r})"
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}:
        low, high = _bounds(schema, error["loc"])
        if low is not None and high is not None:
            return f"must be between {low} and {high} (got {value!r})"
        return f"{error['msg'].lower()} (got {value!r})"
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        return f"must be an integer (got {value!r})"
    if kind in {"float_type", "float_parsing", "finite_number"}:
        return f"must be a finite number (got {value!r})"
    return str(error["msg"])


def _kind_of(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _field(schema: type[VideoParams], loc: tuple[int | str, ...]) -> Any:
    return schema.model_fields.get(str(loc[0])) if loc else None


def _literal_values(schema: type[VideoParams], loc: tuple[int | str, ...]) -> tuple[object, ...]:
    field = _field(schema, loc)
    return getattr(field.annotation, "__args__", ()) if field is not None else ()


def _bounds(schema: type[VideoParams], loc: tuple[int | str, ...]) -> tuple[Any, Any]:
    field = _field(schema, loc)
    low = high = None
    for rule in field.metadata if field is not None else ():
        low = getattr(rule, "ge", low)
        high = getattr(rule, "le", high)
    return low, high
