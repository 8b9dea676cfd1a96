"""Content policy: a pluggable check run on every submit before a job may run.

A blocked request still gets a request_id and ends FAILED with the reason, as the hosted
service's content blocks do; it never occupies a worker.
"""

from __future__ import annotations

import re
from typing import Protocol

from PIL import Image


class Moderator(Protocol):
    def check(self, prompt: str, image: Image.Image | None = None) -> str | None:
        """None when the request may run, else the reason it is blocked."""


class BlocklistModerator:
    """Blocks prompts containing any configured term (whole words, case-insensitive)."""

    def __init__(self, terms: list[str]) -> None:
        self.terms = [t.strip().lower() for t in terms if t.strip()]
        self._pattern = (
            re.compile(r"\b(" + "|".join(re.escape(t) for t in self.terms) + r")\b", re.IGNORECASE)
            if self.terms
            else None
        )

    def check(self, prompt: str, image: Image.Image | None = None) -> str | None:
        if self._pattern is None:
            return None
        match = self._pattern.search(prompt)
        if match is None:
            return None
        return f"content policy: the prompt was blocked (blocked term: {match.group(1).lower()!r})"
