"""What the tests of deploy/ share: where the files are, and which settings exist."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from videoserve.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# Variables read by others than videoserve's Settings: Hugging Face, prometheus-client, CUDA.
FOREIGN = {"HF_HOME", "PROMETHEUS_MULTIPROC_DIR", "CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED"}


def setting_names() -> set[str]:
    """Every `VIDEOSERVE_*` variable a Settings field reads."""
    prefix = Settings.model_config.get("env_prefix", "")
    return {prefix + name.upper() for name in Settings.model_fields}


def unknown_settings(names: Iterable[str]) -> list[str]:
    """The `VIDEOSERVE_*` names among `names` that no setting reads (a typo goes unnoticed
    otherwise: Settings ignores unknown variables)."""
    known = setting_names()
    return sorted(name for name in names if name.startswith("VIDEOSERVE_") and name not in known)


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, comments and blank lines left out."""
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs
