"""The Python client for a videoserve server: `Client` (blocking) and `AsyncClient` (asyncio).

    from videoserve.client import Client

    with Client(api_key="...", base_url="http://127.0.0.1:8000") as client:
        job = client.submit_async("sora-2-pro", prompt="A druid at sunset", duration="8")
        result = job.wait(timeout=900)
        job.download("druid.mp4")

Errors are the classes of `videoserve.errors`, each with the HTTP `status_code` it came from.
"""

from __future__ import annotations

from videoserve.client._async import AsyncClient, AsyncJob
from videoserve.client._sync import Client, Job
from videoserve.errors import InferenceFailed, InferenceTimeout

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "Client",
    "InferenceFailed",
    "InferenceTimeout",
    "Job",
]
