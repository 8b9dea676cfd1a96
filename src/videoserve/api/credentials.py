"""The one reading of a request's API key, shared by authentication and the rate limiter.

Both must see the same value: when the limiter read the last `x-api-key` and authentication the
first, a valid key followed by junk authenticated as the key and landed in a fresh rate-limit
bucket on every call. So an ambiguous request (the header twice, or `x-api-key` and
`Authorization: Bearer` naming different keys) is refused before either looks at it.
"""

from __future__ import annotations

from collections.abc import Iterable

from videoserve import errors

AMBIGUOUS = (
    "ambiguous credentials: send the API key once, in one x-api-key header or one "
    "Authorization: Bearer header (both only if they carry the same key)"
)


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key from `x-api-key` or `Authorization: Bearer`, or None when there is none.

    `InvalidRequest` (400) when the request carries more than one of either header, or both
    with different keys."""
    api_keys: list[bytes] = []
    authorizations: list[bytes] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"x-api-key":
            api_keys.append(value)
        elif lowered == b"authorization":
            authorizations.append(value)
    return key_from(api_keys, authorizations)


def key_from(api_keys: list[bytes], authorizations: list[bytes]) -> str | None:
    """`presented_key` of a request whose `x-api-key` and `Authorization` values the caller
    has already gathered (the poll layer reads all its headers in one pass)."""
    if len(api_keys) > 1 or len(authorizations) > 1:
        raise errors.InvalidRequest(AMBIGUOUS)
    from_header = api_keys[0].strip() if api_keys else b""
    bearer = b""
    if authorizations:
        scheme, _, credentials = authorizations[0].strip().partition(b" ")
        if scheme.lower() == b"bearer":
            bearer = credentials.strip()
    if from_header and bearer and from_header != bearer:
        raise errors.InvalidRequest(AMBIGUOUS)
    presented = from_header or bearer
    return presented.decode("latin-1") if presented else None
