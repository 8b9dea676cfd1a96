"""Characters: a name and reference frames taken from a caller's video, per API key.

What a character is: a few frames (`FRAMES`, evenly spaced through the clip, scaled to fit
`FRAME_SIDE`) stored as PNGs, and a name the caller's prompts may mention as `@Name`. A video
that uses it hands those frames to a model that takes reference images (Wan VACE), as
references; nothing more. It does not guarantee the same face, voice or identity in the
result: that is up to the model, and a model without reference images refuses (400).
Characters belong to the key that made them (another key's id is a 404) and live for
`character_retention_seconds`, then the row and the frames are deleted.
"""

from __future__ import annotations

import asyncio
import builtins
import io
import re
import secrets
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from PIL import Image
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from videoserve import errors
from videoserve.jobs import clock, schema
from videoserve.jobs.database import Database, Migrations
from videoserve.jobs.records import ApiKey
from videoserve.media.video_input import decode_video, evenly_spaced, video_limits
from videoserve.settings import Settings
from videoserve.storage.base import BlobStore

FRAMES = 4  # reference frames kept per character
FRAME_SIDE = 512  # the longer side of a kept frame, in pixels
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
MENTION = re.compile(r"(?<![\w@])@([A-Za-z][A-Za-z0-9_-]{0,63})")

# A caller's characters (reference frames taken from a video), per key, kept for their own
# retention. The frames are blobs under `characters/<id>/`.
table = sa.Table(
    "characters",
    schema.metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # char_...
    sa.Column("api_key_id", sa.String(40), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),  # what `@Name` in a prompt refers to
    sa.Column("frame_keys", sa.JSON, nullable=False),  # blob keys of the reference frames
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.UniqueConstraint("api_key_id", "name", name="uq_characters_key_name"),
)
sa.Index("ix_characters_expires", table.c.expires_at)


def _v1_create(conn: Connection) -> None:
    table.create(conn, checkfirst=True)  # with its index


# The "characters" package's own list, so its versions never clash with the jobs package's.
MIGRATIONS = Migrations("characters", ((1, _v1_create),))


@dataclass(frozen=True)
class Character:
    """One stored character."""

    id: str  # char_...
    api_key_id: str  # owner; other keys get 404
    name: str
    frame_keys: tuple[str, ...]  # blob keys of its reference frames (PNG)
    created_at: float
    expires_at: float


def character_prefix(character_id: str) -> str:
    return f"characters/{character_id}/"


def mentions(prompt: str) -> list[str]:
    """The `@Name`s in a prompt, in order, each once (an e-mail address is not one)."""
    return list(dict.fromkeys(MENTION.findall(prompt)))


class Characters:
    """Create, read, list, delete and expire the caller's characters."""

    def __init__(self, settings: Settings, database: Database, blobs: BlobStore) -> None:
        self.settings = settings
        self.database = database
        self.blobs = blobs

    async def create(self, key: ApiKey, name: object, video: bytes | None) -> Character:
        """Take reference frames from `video` and store them under `name`; 400 on bad input."""
        if not isinstance(name, str) or not NAME.match(name):
            raise errors.InvalidRequest(
                "name: must be 1-64 letters, digits, '_' or '-', starting with a letter "
                f"(so a prompt can say @name; got {name!r})",
                param="name",
            )
        if video is None:
            raise errors.InvalidRequest(
                "video: required: an uploaded MP4, MOV or WebM file", param="video"
            )
        frames = await asyncio.to_thread(_reference_frames, video, self.settings)
        await self._forget_expired_name(key, name)
        character_id = "char_" + secrets.token_hex(12)
        prefix = character_prefix(character_id)
        keys = []
        for index, png in enumerate(frames):
            keys.append(f"{prefix}{index}.png")
            await self.blobs.put_bytes(keys[-1], png, "image/png")
        now = clock.now()
        character = Character(
            id=character_id,
            api_key_id=key.id,
            name=name,
            frame_keys=tuple(keys),
            created_at=now,
            expires_at=now + self.settings.character_retention_seconds,
        )
        try:
            async with self.database.transaction() as conn:
                await conn.execute(
                    table.insert().values(
                        id=character.id,
                        api_key_id=character.api_key_id,
                        name=character.name,
                        frame_keys=list(character.frame_keys),
                        created_at=character.created_at,
                        expires_at=character.expires_at,
                    )
                )
        except IntegrityError:
            await self.blobs.delete_prefix(prefix)
            raise errors.InvalidRequest(
                f"name: you already have a character named {name!r}; delete it or pick "
                "another name",
                param="name",
            ) from None
        return character

    async def get(self, key: ApiKey, character_id: str) -> Character:
        """The caller's live character; NotFound for unknown, expired and other keys' ids."""
        query = table.select().where(table.c.id == character_id, table.c.expires_at > clock.now())
        if not key.is_admin:
            query = query.where(table.c.api_key_id == key.id)
        async with self.database.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise errors.NotFound(f"character '{character_id}' not found")
        return _record(row)

    async def list(self, key: ApiKey) -> list[Character]:
        """The caller's live characters, newest first."""
        query = (
            table.select()
            .where(table.c.api_key_id == key.id, table.c.expires_at > clock.now())
            .order_by(table.c.created_at.desc(), table.c.id.desc())
        )
        async with self.database.connect() as conn:
            return [_record(row) for row in await conn.execute(query)]

    async def delete(self, key: ApiKey, character_id: str) -> Character:
        character = await self.get(key, character_id)
        async with self.database.transaction() as conn:
            await conn.execute(table.delete().where(table.c.id == character.id))
        await self.blobs.delete_prefix(character_prefix(character.id))
        return character

    async def resolve(
        self, key: ApiKey, ids: builtins.list[str], prompt: str
    ) -> builtins.list[Character]:
        """The characters a request uses: its `characters` ids and its prompt's `@Name`s.

        An id that is not the caller's is a 404; a mention that names none of the caller's
        characters is ordinary text (prompts may hold `@` for other reasons).
        """
        chosen = {c.id: c for c in [await self.get(key, i) for i in ids]}
        names = mentions(prompt)
        if names:
            query = table.select().where(
                table.c.api_key_id == key.id,
                table.c.name.in_(names),
                table.c.expires_at > clock.now(),
            )
            async with self.database.connect() as conn:
                for row in await conn.execute(query):
                    chosen.setdefault(row.id, _record(row))
        return list(chosen.values())

    async def sweep(self) -> int:
        """Delete characters past their retention: the frames first, then the rows."""
        query = table.select().where(table.c.expires_at <= clock.now()).limit(100)
        deleted = 0
        while True:
            async with self.database.connect() as conn:
                rows = list(await conn.execute(query))
            if not rows:
                return deleted
            for row in rows:
                await self.blobs.delete_prefix(character_prefix(row.id))
            async with self.database.transaction() as conn:
                result = await conn.execute(
                    table.delete().where(table.c.id.in_([row.id for row in rows]))
                )
            deleted += result.rowcount or 0

    async def _forget_expired_name(self, key: ApiKey, name: str) -> None:
        """An expired character not yet swept must not keep its name taken."""
        query = table.select().where(
            table.c.api_key_id == key.id, table.c.name == name, table.c.expires_at <= clock.now()
        )
        async with self.database.connect() as conn:
            rows = list(await conn.execute(query))
        for row in rows:
            await self.blobs.delete_prefix(character_prefix(row.id))
            async with self.database.transaction() as conn:
                await conn.execute(table.delete().where(table.c.id == row.id))


async def frames_of(blobs: BlobStore, character: Character) -> list[bytes]:
    return [await blobs.get_bytes(k) for k in character.frame_keys]


def _reference_frames(video: bytes, settings: Settings) -> list[bytes]:
    """`FRAMES` PNGs evenly spread through the clip, the longer side at most `FRAME_SIDE`."""
    limits = video_limits(settings)
    probe = decode_video(video, limits, what="video")
    size = _fitted(probe.width, probe.height)
    decoded = decode_video(
        video, limits, what="video", keep=evenly_spaced(probe.frames, FRAMES), size=size
    )
    return [_png(frame) for frame in decoded.kept]


def _fitted(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, FRAME_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "PNG")
    return buffer.getvalue()


def _record(row: sa.Row) -> Character:
    return Character(
        id=row.id,
        api_key_id=row.api_key_id,
        name=row.name,
        frame_keys=tuple(row.frame_keys),
        created_at=row.created_at,
        expires_at=row.expires_at,
    )
