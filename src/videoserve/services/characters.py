"""Characters: a name and reference frames taken from a caller's video, per API key.

What a character is: a few frames (`FRAMES`, evenly spaced through the clip, scaled to fit
`FRAME_SIDE`) stored as PNGs, and a name the caller's prompts may mention as `@Name`. A video
that uses it hands those frames to a model that takes reference images (Wan VACE), as
references; nothing more. It does not guarantee the same face, voice or identity in the
result: that is up to the model, and a model without reference images refuses (400).
Characters belong to the key that made them (another key's id is a 404) and live for
`character_retention_seconds`, then the row and the frames are deleted.

A character costs `character_price` credits, charged in the transaction that inserts it (406
when the key cannot pay, checked once more before the clip is decoded), and a key may hold at
most `max_characters_per_key` live ones. The clip is decoded under the `max_video_*` limits on
the process's bounded decoder (`VideoDecoder`): one demux to count its frames, one decode that
keeps only the few it needs, scaled. Its frames are stored before the row (a reader never sees
a row without its frames) and removed again when the row is refused, whatever the reason.
"""

from __future__ import annotations

import builtins
import io
import re
import secrets
from dataclasses import dataclass
from functools import partial

import numpy as np
import sqlalchemy as sa
from PIL import Image
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError, IntegrityError

from videoserve import clock, errors
from videoserve.db.database import Database, Migrations
from videoserve.jobs import ledger, schema, text
from videoserve.jobs.keys import ANONYMOUS
from videoserve.jobs.records import ApiKey
from videoserve.media.video_input import VideoDecoder, evenly_spaced
from videoserve.settings import Settings
from videoserve.storage.base import BlobStore

FRAMES = 4  # reference frames kept per character
FRAME_SIDE = 512  # the longer side of a kept frame, in pixels
NAME_CHARS = 64  # the column's size
# `fullmatch`, not `^...$`: `$` also matches before a final newline ("Hero\n").
NAME = re.compile(rf"[A-Za-z][A-Za-z0-9_-]{{0,{NAME_CHARS - 1}}}")
MENTION = re.compile(r"(?<![\w@])@([A-Za-z][A-Za-z0-9_-]{0,63})")

# A caller's characters (reference frames taken from a video), per key, kept for their own
# retention. The frames are blobs under `characters/<id>/`.
table = sa.Table(
    "characters",
    schema.metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # char_...
    sa.Column("api_key_id", sa.String(40), nullable=False),
    sa.Column("name", sa.String(NAME_CHARS), nullable=False),  # what `@Name` in a prompt refers to
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

    def __init__(
        self, settings: Settings, database: Database, blobs: BlobStore, decoder: VideoDecoder
    ) -> None:
        self.settings = settings
        self.database = database
        self.blobs = blobs
        self.decoder = decoder

    async def create(self, key: ApiKey, name: object, video: bytes | None) -> Character:
        """Take reference frames from `video` and store them under `name`, charged; 400 on bad
        input, 406 when the key cannot pay. Nothing is decoded for a request refused anyway."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise errors.InvalidRequest(
                f"name: must be 1-{NAME_CHARS} letters, digits, '_' or '-', starting with a "
                f"letter (so a prompt can say @name; got {text.printable(repr(name))[:100]})",
                param="name",
            )
        if video is None:
            raise errors.InvalidRequest(
                "video: required: an uploaded MP4, MOV or WebM file", param="video"
            )
        price = self.price(key)
        await ledger.check_affordable(self.database, key.id, price)
        await self._check_cap(key)
        frames = await _reference_frames(video, self.decoder)
        await self._forget_expired_name(key, name)
        now = clock.now()
        character_id = "char_" + secrets.token_hex(12)
        prefix = character_prefix(character_id)
        character = Character(
            id=character_id,
            api_key_id=key.id,
            name=name,
            frame_keys=tuple(f"{prefix}{index}.png" for index in range(len(frames))),
            created_at=now,
            expires_at=now + self.settings.character_retention_seconds,
        )
        try:
            for frame_key, png in zip(character.frame_keys, frames, strict=True):
                await self.blobs.put_bytes(frame_key, png, "image/png")
        except BaseException:
            await self.blobs.delete_prefix(prefix)  # a half-written set of frames
            raise
        try:
            await self.database.run_transaction(
                partial(_admit, character, price, self.settings.max_characters_per_key)
            )
        except (IntegrityError, DataError, _Declined, _OverCap) as exc:
            # The row was refused, so nothing holds the frames. (Other errors keep them: the
            # row may have been committed before the error reached us.)
            await self.blobs.delete_prefix(prefix)
            if isinstance(exc, IntegrityError):
                raise errors.InvalidRequest(
                    f"name: you already have a character named {name!r}; delete it or pick "
                    "another name",
                    param="name",
                ) from None
            if isinstance(exc, _Declined):
                assert price is not None
                raise ledger.insufficient(
                    await ledger.balance(self.database, key.id), price
                ) from None
            if isinstance(exc, _OverCap):
                raise _over_cap(self.settings.max_characters_per_key) from None
            raise
        return character

    def price(self, key: ApiKey) -> ledger.Charge | None:
        """What one character costs the key; None when nothing is charged (auth off, free)."""
        if key.id == ANONYMOUS.id or self.settings.character_price <= 0:
            return None
        return ledger.Charge(1, self.settings.character_price, unit="character")

    async def _check_cap(self, key: ApiKey) -> None:
        cap = self.settings.max_characters_per_key
        if not cap:
            return
        async with self.database.connect() as conn:
            count = (await conn.execute(_live_count(key.id, clock.now()))).scalar() or 0
        if count >= cap:
            raise _over_cap(cap)

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


async def _reference_frames(video: bytes, decoder: VideoDecoder) -> list[bytes]:
    """`FRAMES` PNGs evenly spread through the clip, the longer side at most `FRAME_SIDE`.

    The frame count comes from demuxing alone and the one decode keeps only the chosen
    frames, scaled: a fraction of the CPU and memory of keeping every frame at full size."""
    total = await decoder.count_frames(video, what="video")
    decoded = await decoder.decode(
        video, what="video", keep=evenly_spaced(max(total, 1), FRAMES), fit=FRAME_SIDE
    )
    return [_png(frame) for frame in decoded.kept]


def _live_count(api_key_id: str, now: float) -> sa.Select:
    return (
        sa.select(sa.func.count())
        .select_from(table)
        .where(table.c.api_key_id == api_key_id, table.c.expires_at > now)
    )


def _admit(character: Character, price: ledger.Charge | None, cap: int, conn: Connection) -> None:
    """In one transaction: charge the key (which locks its row, so a key's creations queue
    here), check its cap of live characters, insert the row."""
    if price is not None and not ledger.charge(conn, character.api_key_id, character.id, price):
        raise _Declined
    if cap and (conn.execute(_live_count(character.api_key_id, clock.now())).scalar() or 0) >= cap:
        raise _OverCap
    conn.execute(
        table.insert().values(
            id=character.id,
            api_key_id=character.api_key_id,
            name=character.name,
            frame_keys=list(character.frame_keys),
            created_at=character.created_at,
            expires_at=character.expires_at,
        )
    )


def _over_cap(cap: int) -> errors.InvalidRequest:
    return errors.InvalidRequest(
        f"characters: this key already has {cap} live characters, the most one key may have "
        "(VIDEOSERVE_MAX_CHARACTERS_PER_KEY); delete one first",
        param="name",
    )


class _Declined(Exception):
    """The key cannot pay; raised inside the transaction to roll it back."""


class _OverCap(Exception):
    """The key holds its cap of live characters; raised inside the transaction."""


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
