"""OpenAI's 2026 video operations: extensions, edits and characters under `/v1/videos`.

The official SDK sends these as multipart with `video` an uploaded file (it cannot send the
`{"id"}` form in multipart); LiteLLM sends JSON with `"video": {"id": ...}`. Both arrive here as
a `SourceRef` for the operations service. Included before `openai.router`, whose
`GET /v1/videos/{video_id}` would otherwise take `/v1/videos/characters`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from starlette.datastructures import UploadFile

from videoserve import errors
from videoserve.api import openai_views
from videoserve.api.deps import (
    QUEUE_HEADERS,
    CharactersDep,
    KeyDep,
    QueueDep,
    RegistryDep,
    SettingsDep,
    VideoOpsDep,
    json_body,
    refuse_repeated_fields,
)
from videoserve.api.openai_views import OpenAIRoute
from videoserve.api.routes.openai import DEFAULT_MODEL, served_name
from videoserve.jobs.queue_options import QueueOptions
from videoserve.models.registry import ModelRegistry
from videoserve.services.video_ops import PARAM, SourceRef
from videoserve.settings import Settings

router = APIRouter(prefix="/v1/videos", tags=["OpenAI Videos"], route_class=OpenAIRoute)


def _body_doc(required: list[str], fields: dict[str, Any]) -> dict[str, Any]:
    properties = {"prompt": {"type": "string"}, "model": {"type": "string"}, **fields}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": required,
                        "properties": {
                            **properties,
                            PARAM: {"type": "string", "format": "binary"},
                            f"{PARAM}[id]": {"type": "string"},
                        },
                    }
                },
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": required,
                        "properties": {
                            **properties,
                            PARAM: {
                                "type": "object",
                                "required": ["id"],
                                "properties": {"id": {"type": "string"}},
                            },
                        },
                    }
                },
            },
        }
    }


_SECONDS = {"type": "string", "enum": ["4", "8", "12"], "default": "4"}
_STRENGTH = {"type": "number", "minimum": 0, "maximum": 1, "default": 0.6}


@router.post(
    "/extensions",
    openapi_extra=_body_doc(["prompt", PARAM], {"seconds": _SECONDS}) | QUEUE_HEADERS,
    summary="Continue a video from its last frame; one stitched video",
)
async def extend(
    request: Request,
    video_ops: VideoOpsDep,
    settings: SettingsDep,
    registry: RegistryDep,
    key: KeyDep,
    queue: QueueDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    fields, ref = await source_request(request, settings)
    return await _on_source(
        fields,
        ref,
        registry,
        key,
        idempotency_key,
        queue,
        video_ops.extend,
        "seconds",
    )


@router.post(
    "/edits",
    openapi_extra=_body_doc(["prompt", PARAM], {"strength": _STRENGTH}) | QUEUE_HEADERS,
    summary="Edit a video with a prompt (video-to-video); same duration and aspect",
)
async def edit(
    request: Request,
    video_ops: VideoOpsDep,
    settings: SettingsDep,
    registry: RegistryDep,
    key: KeyDep,
    queue: QueueDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    fields, ref = await source_request(request, settings)
    return await _on_source(
        fields,
        ref,
        registry,
        key,
        idempotency_key,
        queue,
        video_ops.edit,
        "strength",
    )


async def _on_source(
    fields: dict[str, Any],
    ref: SourceRef,
    registry: ModelRegistry,
    key: Any,
    idempotency_key: str | None,
    queue: QueueOptions,
    operation: Any,
    amount: str,
) -> dict[str, Any]:
    """Extensions and edits read the same body: the source, prompt, model and one amount
    (`seconds` or `strength`); only the operation differs."""
    model = fields.pop("model", None)
    job = await operation(
        key,
        served_name(registry, model) if model else None,
        fields.pop("prompt", None),
        fields.pop(amount, None),
        ref,
        fields,
        default_model=served_name(registry, DEFAULT_MODEL),
        idempotency_key=idempotency_key,
        queue=queue,
    )
    return openai_views.video(job)


async def source_request(request: Request, settings: Settings) -> tuple[dict[str, Any], SourceRef]:
    """(the other fields, the source) from multipart/form or a JSON body."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        return await _form_request(request, settings)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise errors.InvalidRequest("request body must be a JSON object")
    fields = dict(body)
    video = fields.pop(PARAM, None)
    if video is None:
        return fields, SourceRef()
    if not isinstance(video, dict) or not isinstance(video.get("id"), str) or not video["id"]:
        raise errors.InvalidRequest(
            f'{PARAM}: in JSON must be {{"id": "<a completed video>"}}; upload a file with '
            "multipart/form-data",
            param=PARAM,
        )
    return fields, SourceRef(video_id=video["id"])


async def _form_request(request: Request, settings: Settings) -> tuple[dict[str, Any], SourceRef]:
    fields: dict[str, Any] = {}
    ref = SourceRef()
    limit = settings.max_video_bytes
    async with request.form(max_part_size=settings.max_body_bytes) as form:
        items = form.multi_items()
        # `video` and `video[id]` name one source: together they are sent twice too.
        refuse_repeated_fields(PARAM if name == f"{PARAM}[id]" else name for name, _ in items)
        for name, value in items:
            if name == PARAM and isinstance(value, UploadFile):
                data = await value.read(limit + 1)
                if len(data) > limit:
                    raise errors.PayloadTooLarge(
                        f"{PARAM}: the file is larger than the limit of {limit} bytes",
                        param=PARAM,
                    )
                ref = SourceRef(upload=data, content_type=value.content_type)
            elif name in (f"{PARAM}[id]", PARAM) and isinstance(value, str):
                ref = SourceRef(video_id=value)
            elif isinstance(value, UploadFile):
                raise errors.InvalidRequest(f"{name}: a file is accepted only as {PARAM}")
            else:
                fields[name] = value
    return fields, ref


# --- characters ------------------------------------------------------------------------------


@router.post(
    "/characters",
    openapi_extra=_body_doc(["name", PARAM], {"name": {"type": "string"}}),
    summary="Create a character: reference frames taken from a video, under a name",
)
async def create_character(
    request: Request, characters: CharactersDep, settings: SettingsDep, key: KeyDep
) -> dict[str, Any]:
    fields, ref = await source_request(request, settings)
    if ref.video_id is not None:
        raise errors.InvalidRequest(
            f"{PARAM}: a character is made from an uploaded video file", param=PARAM
        )
    character = await characters.create(key, fields.get("name"), ref.upload)
    return openai_views.character(character)


@router.get("/characters", summary="List your characters, newest first")
async def list_characters(characters: CharactersDep, key: KeyDep) -> dict[str, Any]:
    listed = [openai_views.character(c) for c in await characters.list(key)]
    return openai_views.page(listed, has_more=False)


@router.get("/characters/{character_id}", summary="Retrieve a character")
async def get_character(
    character_id: str, characters: CharactersDep, key: KeyDep
) -> dict[str, Any]:
    return openai_views.character(await characters.get(key, character_id))


@router.delete("/characters/{character_id}", summary="Delete a character and its frames")
async def delete_character(
    character_id: str, characters: CharactersDep, key: KeyDep
) -> dict[str, Any]:
    character = await characters.delete(key, character_id)
    return {"id": character.id, "object": "character.deleted", "deleted": True}
