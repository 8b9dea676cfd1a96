"""Where a model's weights are: a local folder, or a Hugging Face repo in the local hub cache.

A model's `path` is either. An existing folder wins; otherwise text of the form `owner/name`
(`Wan-AI/Wan2.1-T2V-1.3B-Diffusers`) is a repo id, looked up in the hub cache that
`huggingface_hub` uses (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`).
Looking never touches the network, so a server starts the same with or without one; only
`videoserve pull NAME` downloads, and it says plainly when it cannot.
"""

from __future__ import annotations

import re
from pathlib import Path

_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}\Z")


class PullFailed(Exception):
    """The weights could not be downloaded; the message says why and what to do."""


def is_repo_id(text: str) -> bool:
    """True for `owner/name` as the Hugging Face Hub spells repo ids (no paths like `./x/y`)."""
    return bool(_REPO_ID.match(text)) and ".." not in text


class Weights:
    """A model's weights: a local diffusers folder, or a repo id resolved in the hub cache."""

    def __init__(self, source: str | Path, *, cache_dir: str | Path | None = None) -> None:
        """`source` as a Path is always a folder; as a str, a repo id when it has that form.

        (The models file keeps `owner/name` as written only when no such folder is next to it.)
        `cache_dir` None: huggingface_hub's own cache (HF_HUB_CACHE / HF_HOME), read when used.
        """
        self.source = str(source)
        self._cache_dir = cache_dir
        local = isinstance(source, Path) or not is_repo_id(self.source)
        self.repo_id: str | None = None if local else self.source

    @property
    def hub_cache(self) -> Path:
        if self._cache_dir is not None:
            return Path(self._cache_dir)
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)

    def folder(self) -> Path | None:
        """The folder to load from now: the local one, or the cached snapshot (None if absent)."""
        if self.repo_id is None:
            return Path(self.source)
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(self.repo_id, "model_index.json", cache_dir=self.hub_cache)
        return Path(found).parent if isinstance(found, str) else None

    def missing_reason(self, model: str) -> str:
        """Why the weights are not here: where we looked, and the command that fixes it."""
        if self.repo_id is None:
            return f"no model folder at {self.source}"
        return (
            f"{self.repo_id} is not a folder here, nor in the Hugging Face cache at "
            f"{self.hub_cache} (HF_HOME / HF_HUB_CACHE); download it with `videoserve pull {model}`"
        )

    def pull(self, model: str) -> Path:
        """Download the repo into the hub cache with huggingface_hub's progress bars."""
        if self.repo_id is None:
            raise PullFailed(
                f"model '{model}' loads the local folder {self.source}; `videoserve pull` "
                'downloads Hugging Face repos: set path = "owner/name" (a repo id) to use it'
            )
        from huggingface_hub import constants, snapshot_download

        if constants.HF_HUB_OFFLINE:
            cached = self.folder()
            if cached is not None:
                return cached
            raise PullFailed(
                f"cannot download {self.repo_id}: HF_HUB_OFFLINE is set, so nothing may be "
                f"fetched, and it is not in the cache at {self.hub_cache}; unset HF_HUB_OFFLINE "
                "on a host with network access, or copy the weights into a folder and set "
                "path to it"
            )
        try:
            return Path(snapshot_download(self.repo_id, cache_dir=self.hub_cache))
        except Exception as exc:  # network, authentication, a missing repo: one message
            raise PullFailed(
                f"could not download {self.repo_id} into {self.hub_cache}: "
                f"{type(exc).__name__}: {exc} (no network? a gated repo needs its terms "
                "accepted and HF_TOKEN set)"
            ) from exc
