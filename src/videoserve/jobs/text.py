"""What text the job database can keep, checked before a statement is sent.

SQLite stores any string; PostgreSQL refuses a NUL byte and a value over its column's length
(asyncpg: "invalid byte sequence", "value too long"), which surfaced as a 503 "retry shortly"
for what is a client's mistake. Checking here gives both databases the same answer: an id that
cannot be stored cannot exist (404), any other value is a 400 naming its field.
"""

from __future__ import annotations

from videoserve import errors

MAX_ID_CHARS = 64  # jobs.id, and every id we hand out (video_ + 32 hex, whep_..., key_...)
MAX_IDEMPOTENCY_KEY_CHARS = 200  # jobs.idempotency_key


def unstorable(value: str, max_chars: int | None = None) -> str | None:
    """Why `value` cannot be stored as text in both databases, or None when it can."""
    if "\x00" in value:
        return "must not contain a NUL character"
    if max_chars is not None and len(value) > max_chars:
        return f"must be at most {max_chars} characters (got {len(value)})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (it contains a lone surrogate)"
    return None


def could_be_id(value: str) -> bool:
    """False for a string that no id we issue can equal: the caller answers 404 at once."""
    return unstorable(value, MAX_ID_CHARS) is None


def check_field(field: str, value: str | None, max_chars: int | None = None) -> None:
    """`InvalidRequest` naming `field` when `value` cannot be stored."""
    if value is None:
        return
    reason = unstorable(value, max_chars)
    if reason is not None:
        raise errors.InvalidRequest(f"{field}: {reason}", param=field)


MAX_JSON_DEPTH = 64  # far beyond any model's parameters; deep enough for any real client
TOO_DEEP = f"nesting too deep: JSON values may nest at most {MAX_JSON_DEPTH} levels"


class TooDeep(Exception):
    """A JSON value nested deeper than `MAX_JSON_DEPTH`."""


def printable(value: str) -> str:
    """`value` with what UTF-8 cannot encode (lone surrogates) escaped, for error messages."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def find_unstorable(value: object, where: str = "", depth: int = 0) -> tuple[str, str] | None:
    """The first (field path, reason) in a parsed JSON value whose text cannot be stored.

    Keys count as text too. `TooDeep` past `MAX_JSON_DEPTH` levels."""
    if depth > MAX_JSON_DEPTH:
        raise TooDeep
    if isinstance(value, str):
        reason = unstorable(value)
        return (where or "body", reason) if reason else None
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{where}.{printable(key)}" if where else printable(key)
            reason = unstorable(key)
            if reason is not None:
                return name, "the name " + reason
            found = find_unstorable(item, name, depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = find_unstorable(item, f"{where}[{index}]", depth + 1)
            if found:
                return found
    return None


def check_tree(value: object) -> None:
    """`InvalidRequest` naming the first field of `value` that cannot be stored, or when it
    nests too deep."""
    try:
        found = find_unstorable(value)
    except TooDeep:
        raise errors.InvalidRequest(TOO_DEEP) from None
    if found is not None:
        field, reason = found
        raise errors.InvalidRequest(f"{field}: {reason}", param=field)
