"""The HTTP layer: dialects (Segmind, OpenAI) over one job service."""

from videoserve.api.app import create_app

__all__ = ["create_app"]
