"""All configuration in one object, read from `VIDEOSERVE_*` environment variables.

Every component receives a `Settings` instance from its caller; nothing below this module
reads the environment, so tests can build as many differently-configured apps as they like.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback_host(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """The server's, the worker's and the CLI's configuration."""

    model_config = SettingsConfigDict(env_prefix="VIDEOSERVE_", extra="ignore")

    # --- where things live -------------------------------------------------------------
    data_dir: Path = Field(
        default_factory=lambda: default_data_dir(),
        description="SQLite file, videos, caches; default: ./.videoserve if that folder exists, "
        "else the per-user data folder (~/.local/share/videoserve on Linux)",
    )
    database_url: str | None = Field(
        default=None, description="sqlite:///path or postgresql://...; default: SQLite in data_dir"
    )
    storage_url: str | None = Field(
        default=None, description="file:///path or s3://bucket/prefix; default: data_dir/blobs"
    )
    database_pool_size: int = Field(
        default=20,
        ge=1,
        description="Database connections per process; requests beyond it wait for one",
    )
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    public_url: str | None = Field(
        default=None, description="Absolute base URL clients reach us at; else taken from requests"
    )
    secret_key: str | None = Field(
        default=None, description="HMAC key for signed output URLs; default: data_dir/secret.key"
    )

    # --- HTTP ----------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    auth: bool = Field(default=True, description="off is accepted only on a loopback host")
    max_body_bytes: int = 25 * 1024 * 1024
    header_timeout_seconds: float = Field(
        default=30.0,
        ge=0,
        description="A connection that has not sent a complete request head in this time gets "
        "408 and is closed; also the window over which the body rate is measured; 0: off",
    )
    min_body_bytes_per_second: float = Field(
        default=1024.0, ge=0, description="A request body slower than this is dropped; 0: off"
    )
    max_connections: int = Field(
        default=1000, ge=0, description="Concurrent connections per server; past it: 503; 0: no cap"
    )
    auth_cache_seconds: float = Field(
        default=10.0, ge=0, description="How long a valid key is remembered (revocation delay)"
    )
    sync_timeout_seconds: float = Field(
        default=600.0, description="How long POST /v1/{model} waits before answering 504"
    )

    # --- jobs ----------------------------------------------------------------------------
    embedded_worker: bool = True
    lease_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    retention_seconds: float = Field(default=3600.0, gt=0)
    poll_interval_seconds: float = Field(
        default=1.0, gt=0, description="Fallback wake-up for a worker that gets no notification"
    )
    sweep_interval_seconds: float = Field(default=30.0, gt=0)
    start_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="A queued job no worker starts within this many seconds fails with code "
        "expired, refunded; a submit's X-Start-Timeout header overrides it; unset: no limit",
    )
    warm_skip_seconds: float = Field(
        default=300.0,
        ge=0,
        description="Warm routing: a worker claims jobs of the models it has loaded first, "
        "but never passes over a job queued longer than this; 0: oldest first",
    )
    target_wait_seconds: float = Field(
        default=60.0,
        gt=0,
        description="The queue wait GET /v1/admin/scaling sizes desired_workers for",
    )
    scheduling_policy: Literal["fair", "fifo"] = Field(
        default="fair",
        description="fair: within a priority class, the next claim goes to the key with the "
        "least service for its share; fifo: oldest first within a priority class",
    )
    fair_default_job_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Fair share's cost of a job of a model with no completed job to measure",
    )

    # --- models --------------------------------------------------------------------------
    models: Path | None = Field(default=None, description="TOML file of model entries")
    aliases: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description='"sora-2-pro=tiny-t2v,other=wan"'
    )
    worker_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Models this worker serves; empty: all available"
    )
    worker_concurrency: int = Field(default=1, ge=1)
    worker_devices: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Devices of this worker's group, e.g. cuda:0,cuda:1 (cpu,cpu in tests): "
        "entries with `parallel` run one video over all of them; empty or one: no group",
    )
    worker_group_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        description="A collective of a worker group waiting longer fails: the group is "
        "restarted and the job goes back to the queue",
    )
    max_job_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="A job running longer fails with code timeout, refunded; a model's "
        "max_job_seconds option overrides it; 0: no limit",
    )
    drain_seconds: float = Field(
        default=600.0, ge=0, description="On SIGTERM, how long a worker may finish its job"
    )
    worker_idle_exit_seconds: float = Field(
        default=0.0,
        ge=0,
        description="`videoserve worker` exits (status 0) after this long with no job to run, "
        "so an autoscaler can scale to zero; 0: never",
    )
    worker_pipeline: bool = Field(
        default=True,
        description="Start the next job's model while the last one's video encodes and "
        "uploads (one job waits on the media stage per slot at most); false: one at a time",
    )
    preload: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Models a worker loads before it claims its first job: names, or 'all' "
        "(every model it serves); empty: each loads on its first job",
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    max_loaded_models: int = Field(
        default=2, ge=1, description="Models a process keeps loaded; another unloads the LRU one"
    )
    model_cache_dir: Path | None = Field(
        default=None, description="Where built-in models are built; default: data_dir/models"
    )
    max_prompt_chars: int = 4000
    encoder: Literal["auto", "libx264", "h264_nvenc"] = Field(
        default="auto",
        description="H.264 encoder: auto is h264_nvenc on an NVIDIA GPU host, else libx264",
    )

    # --- inputs and moderation -----------------------------------------------------------
    blocklist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allow_private_urls: bool = False
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    fetch_timeout_seconds: float = 15.0
    resolve_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How long the host of a URL we are asked to contact (input_reference, "
        "webhooks) may take to resolve; past it the request is a 400",
    )

    # --- video inputs (edits, extensions, characters) ------------------------------------
    # Checked while decoding, never from the container's own claims (a header can lie).
    max_video_bytes: int = Field(
        default=20 * 1024 * 1024, gt=0, description="Size cap of a video input (max_body_bytes too)"
    )
    max_video_seconds: float = Field(default=30.0, gt=0, description="Decoded duration cap")
    # A worker holds an edit's or extension's source decoded: pixels x frames x 3 bytes
    # (1280x720 x 600 frames: 1.7 GB at most).
    max_video_pixels: int = Field(
        default=1280 * 720, gt=0, description="Width x height cap of a video input's frames"
    )
    max_video_frames: int = Field(default=600, gt=0, description="Decoded frame count cap")
    max_video_fps: float = Field(
        default=120.0,
        gt=0,
        description="Frame rate cap of a video input, measured from its decoded timestamps "
        "(a clip over it is a 400: it would make an extension plan frames at that rate)",
    )
    # What one request may hold decoded (frames x width x height x 3 bytes): the source kept
    # by a worker, and an extension's stitched output, checked before they are allocated.
    max_video_decoded_bytes: int = Field(
        default=2 * 1024**3,
        gt=0,
        description="Decoded size cap of one request's video frames, in bytes",
    )
    max_concurrent_video_decodes: int = Field(
        default=2,
        gt=0,
        description="Video inputs decoded at once per API process (each costs a core)",
    )
    character_price: float = Field(
        default=1.0,
        ge=0,
        description="Credits one character costs, charged when it is made (406 when short)",
    )
    max_characters_per_key: int = Field(
        default=100, ge=0, description="Live characters one key may have; 0: no cap"
    )
    character_retention_seconds: float = Field(
        default=7 * 24 * 3600.0, gt=0, description="How long a character is kept"
    )

    # --- webhooks --------------------------------------------------------------------------
    webhook_retry_seconds: float = Field(
        default=3600.0, gt=0, description="How long a failing delivery keeps being retried"
    )
    webhook_backoff_base_seconds: float = Field(default=1.0, gt=0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_progress_interval_seconds: float = Field(
        default=5.0, gt=0, description="At most one video.progress event per job this often"
    )

    # --- credits, rate limits and the running cap ----------------------------------------
    refund_content_blocks: bool = Field(
        default=True, description="Refund a request refused by the content policy"
    )
    refund_running_cancellations: bool = Field(
        default=True, description="Refund a job cancelled while it ran (GPU time was spent)"
    )
    rate_limit: str = Field(
        default="",
        description="Submits per key, e.g. '10/minute' or '10/minute;100/hour'; empty: no limit",
    )
    status_rate_limit: str = Field(
        default="6000/minute",
        description="Every other API call per key (status polls...), a separate bucket",
    )
    redis_url: str | None = Field(
        default=None,
        description="redis://host:6379/0: rate-limit counts shared by every API process; "
        "default: in this process's memory",
    )
    rate_limit_prefix: str = Field(
        default="videoserve", description="Prefix of the rate-limit keys in Redis"
    )
    max_running_per_key: int = Field(
        default=0, ge=0, description="PROCESSING jobs one key may have at once; 0: no cap"
    )

    # --- observability -------------------------------------------------------------------
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one JSON object per line, for log collectors"
    )
    prometheus_multiproc_dir: Path | None = Field(
        default=None,
        validation_alias="PROMETHEUS_MULTIPROC_DIR",
        description="prometheus-client's own variable (it reads it at import, so set it in the "
        "environment of every process): metrics are then summed over the processes that share "
        "the folder",
    )
    worker_metrics_port: int = Field(
        default=0,
        ge=0,
        description="`videoserve worker` serves /metrics, /healthz and /readyz on this port; "
        "0: off",
    )
    worker_metrics_host: str = Field(
        default="127.0.0.1",
        description="Where the worker's /metrics, /healthz and /readyz listen: 0.0.0.0 for a "
        "Prometheus or a kubelet on another host (the container images set it)",
    )

    @field_validator("aliases", mode="before")
    @classmethod
    def _parse_aliases(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = {}
            for item in value.split(","):
                if not item.strip():
                    continue
                name, sep, target = item.partition("=")
                if not sep or not name.strip() or not target.strip():
                    raise ValueError(f"alias {item!r} is not of the form name=target")
                pairs[name.strip()] = target.strip()
            return pairs
        return value

    @field_validator("rate_limit", "status_rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        """Refuse a malformed limit at startup rather than on the first request."""
        value = value.strip()
        if value:
            from limits import parse_many

            parse_many(value)  # ValueError names the bad part
        return value

    @field_validator("worker_models", "worker_devices", "blocklist", "preload", mode="before")
    @classmethod
    def _parse_list(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("worker_devices")
    @classmethod
    def _check_devices(cls, value: list[str]) -> list[str]:
        bad = [d for d in value if not re.fullmatch(r"cpu|cuda:\d+", d)]
        if bad:
            raise ValueError(f"devices must be cpu or cuda:N (got {', '.join(bad)})")
        if len({d.split(":")[0] for d in value}) > 1:
            raise ValueError("a worker group's devices must all be cpu or all cuda:N")
        gpus = [d for d in value if d != "cpu"]
        if len(set(gpus)) != len(gpus):
            raise ValueError("a worker group names each GPU once")
        return value

    # --- derived values ------------------------------------------------------------------
    @property
    def heartbeat_seconds(self) -> float:
        """Heartbeat three times a lease, so two lost beats still keep it."""
        return self.lease_seconds / 3

    def resolved_database_url(self) -> str:
        """The SQLAlchemy async URL: the default SQLite file, or the configured one."""
        url = self.database_url or f"sqlite:///{(self.data_dir / 'videoserve.db').resolve()}"
        for plain, async_driver in (
            ("sqlite://", "sqlite+aiosqlite://"),
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgres://", "postgresql+asyncpg://"),
        ):
            if url.startswith(plain):
                return async_driver + url[len(plain) :]
        return url

    def resolved_storage_url(self) -> str:
        return self.storage_url or (self.data_dir / "blobs").resolve().as_uri()

    def resolved_secret_key(self) -> bytes:
        """The URL-signing key; created once in data_dir so every process on it agrees."""
        if self.secret_key:
            return self.secret_key.encode()
        path = self.data_dir / "secret.key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            candidate = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
            candidate.write_text(secrets.token_urlsafe(32))
            candidate.chmod(0o600)
            try:
                # link() fails if another process won the race, so every process reads one key
                path.hardlink_to(candidate)
            except FileExistsError:
                pass
            finally:
                candidate.unlink(missing_ok=True)
        return path.read_text().strip().encode()

    def tiny_model_dir(self) -> Path:
        return (self.model_cache_dir or self.data_dir / "models") / "tiny-t2v"


LEGACY_DATA_DIR = Path(".videoserve")


def default_data_dir() -> Path:
    """The data folder when none is configured, the same for the server and every CLI command.

    `./.videoserve` when the current folder has one (installs made before this rule keep
    working), else the per-user data folder: a `keys create` run from another folder then
    finds the server's database instead of making an empty one there."""
    if LEGACY_DATA_DIR.is_dir():
        return LEGACY_DATA_DIR
    import platformdirs

    return platformdirs.user_data_path("videoserve")
