"""Delivers webhook events; a placeholder until the webhook work lands."""

from __future__ import annotations

import asyncio
from typing import Any


class WebhookDispatcher:
    def __init__(self, settings: Any, store: Any, **kwargs: Any) -> None:
        self.settings = settings
        self.store = store

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set."""
        await stop.wait()
