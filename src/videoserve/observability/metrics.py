"""Prometheus metrics of one process, built per `Runtime` (no module-level registry).

Two kinds of numbers:

- Events this process saw, counted as they happen (the store tells `Metrics` through its
  `Observer` hooks after each commit): jobs finished by terminal state, credits charged and
  refunded, queue time (at a job's first claim) and inference time (at completion). Each
  process counts its own; Prometheus sums the processes it scrapes. `videoserve worker` serves
  its own on `VIDEOSERVE_WORKER_METRICS_PORT` (`worker.probes`).
- State read from the job database at scrape time by a custom collector: queue depth, demand,
  the oldest queued job's age and running jobs per model, live workers, and per model the
  workers with it loaded (`jobs.scaling`, which `GET /v1/admin/scaling` reads too). These are
  global, so any API process gives the same answer.

Multiprocess mode: with `PROMETHEUS_MULTIPROC_DIR` set in the environment of every process on
a host (an empty folder, cleared before start-up), counters and histograms are written to
files there and `/metrics` of any process sums them all. prometheus-client picks its value
storage when it is first imported from that variable: that module global, and its per-process
files, are the state this module cannot keep per app (two apps in one process share them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from videoserve import clock
from videoserve.jobs import ledger, scaling
from videoserve.jobs.records import Job
from videoserve.jobs.states import Status
from videoserve.jobs.store import JobStore, Observer
from videoserve.jobs.workers import WorkerRegistry

log = logging.getLogger("videoserve.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
QUEUE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
INFERENCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)
# A tiny model loads in a fraction of a second, a 14B one from a network disk in minutes.
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)


@dataclass
class _Snapshot:
    """What the database said at the last scrape."""

    queued: dict[str, int] = field(default_factory=dict)
    demand: dict[str, int] = field(default_factory=dict)  # queued, not low priority
    running: dict[str, int] = field(default_factory=dict)
    oldest: dict[str, float] = field(default_factory=dict)  # seconds the oldest queued waits
    warm: dict[str, int] = field(default_factory=dict)  # live workers with the model loaded
    workers: int | None = None


class _DatabaseCollector(Collector):
    """Yields the gauges of the last snapshot; `/metrics` refreshes it just before rendering."""

    def __init__(self, models: Iterable[str]) -> None:
        self.models = list(models)
        self.snapshot: _Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        if snapshot is None:  # a process that never read the database (a worker's endpoint)
            return
        queued = GaugeMetricFamily(
            "videoserve_queue_depth", "Jobs QUEUED, per model that serves them", labels=["model"]
        )
        running = GaugeMetricFamily(
            "videoserve_jobs_running", "Jobs PROCESSING, per model", labels=["model"]
        )
        demand = GaugeMetricFamily(
            "videoserve_queue_demand",
            "Jobs waiting for a worker, per model, low priority (X-Queue-Priority) left out",
            labels=["model"],
        )
        oldest = GaugeMetricFamily(
            "videoserve_queue_oldest_seconds",
            "Age of the oldest QUEUED job, per model (0 when none)",
            labels=["model"],
        )
        warm = GaugeMetricFamily(
            "videoserve_workers_warm",
            "Live workers with the model loaded now, per model",
            labels=["model"],
        )
        for model in sorted({*self.models, *snapshot.queued, *snapshot.running, *snapshot.warm}):
            queued.add_metric([model], snapshot.queued.get(model, 0))
            running.add_metric([model], snapshot.running.get(model, 0))
            demand.add_metric([model], snapshot.demand.get(model, 0))
            oldest.add_metric([model], snapshot.oldest.get(model, 0.0))
            warm.add_metric([model], snapshot.warm.get(model, 0))
        yield queued
        yield running
        yield demand
        yield oldest
        yield warm
        if snapshot.workers is not None:
            yield GaugeMetricFamily(
                "videoserve_workers_live",
                "Workers that heartbeated recently (the workers table)",
                value=snapshot.workers,
            )


class Metrics(Observer):
    """This process's metrics; also the job store's `Observer`."""

    def __init__(self, models: Iterable[str] = (), *, multiprocess_dir: Path | None = None):
        self.multiprocess_dir = multiprocess_dir
        # In multiprocess mode the samples live in the folder's files and a registry is built
        # per scrape; the metric objects must not be registered anywhere.
        self.registry: CollectorRegistry | None = (
            None if multiprocess_dir is not None else CollectorRegistry()
        )
        own = self.registry
        self.jobs_finished = Counter(
            "videoserve_jobs_finished",
            "Jobs that reached a terminal state, by model and state",
            ["model", "status"],
            registry=own,
        )
        self.credits_spent = Counter(
            "videoserve_credits_spent", "Credits charged for accepted requests", registry=own
        )
        self.credits_refunded = Counter(
            "videoserve_credits_refunded", "Credits refunded for failed requests", registry=own
        )
        self.queue_time = Histogram(
            "videoserve_queue_time_seconds",
            "Seconds from submit to a worker's first claim",
            ["model"],
            buckets=QUEUE_BUCKETS,
            registry=own,
        )
        self.inference_time = Histogram(
            "videoserve_inference_time_seconds",
            "Seconds the model spent generating a completed video",
            ["model"],
            buckets=INFERENCE_BUCKETS,
            registry=own,
        )
        # Loads by this process's worker (preloads and cold starts; not failed ones): with
        # warm routing, how often a worker still pays for a model it did not have.
        self.model_loads = Counter(
            "videoserve_model_loads",
            "Model loads by this process's worker (preloads and cold starts), per model",
            ["model"],
            registry=own,
        )
        self.model_load_time = Histogram(
            "videoserve_model_load_seconds",
            "Seconds each model load took in this process's worker, per model",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=own,
        )
        self._database = _DatabaseCollector(models)
        if own is not None:
            own.register(self._database)

    # --- the store's Observer ----------------------------------------------------------------
    def claimed(self, job: Job) -> None:
        if job.attempt == 1 and job.started_at is not None:
            self.queue_time.labels(job.served_by).observe(max(0.0, job.started_at - job.created_at))

    def finished(self, job: Job) -> None:
        self.jobs_finished.labels(job.served_by, job.status.value).inc()
        if job.status == Status.COMPLETED and job.result:
            seconds = job.result.inference_time
            if isinstance(seconds, int | float):
                self.inference_time.labels(job.served_by).observe(seconds)

    def credits(self, kind: ledger.Kind, amount: float) -> None:
        if amount <= 0:
            return
        if kind == "charge":
            self.credits_spent.inc(amount)
        elif kind == "refund":
            self.credits_refunded.inc(amount)

    def model_loaded(self, model: str, seconds: float) -> None:
        """The worker loaded `model` in `seconds` (called from its model threads)."""
        self.model_loads.labels(model).inc()
        self.model_load_time.labels(model).observe(seconds)

    # --- exposition --------------------------------------------------------------------------
    async def refresh(
        self, store: JobStore, workers: WorkerRegistry, worker_stale_after: float
    ) -> None:
        """Read the database-backed gauges for the next render."""
        queues = await scaling.queue_states(store.database)
        counts = await scaling.worker_counts(store.database, worker_stale_after)
        snapshot = _Snapshot(workers=await workers.count_live(worker_stale_after))
        now = clock.now()
        for model, queue in queues.items():
            snapshot.queued[model] = queue.queued
            snapshot.demand[model] = queue.demand
            snapshot.running[model] = queue.running
            if queue.oldest_queued_at is not None:
                snapshot.oldest[model] = max(0.0, now - queue.oldest_queued_at)
        snapshot.warm = {model: n.warm for model, n in counts.items() if n.warm}
        self._database.snapshot = snapshot

    def forget_database(self) -> None:
        """Leave the database gauges out until the next successful refresh."""
        self._database.snapshot = None

    def render(self) -> bytes:
        """The Prometheus text format of everything this process (or host) knows."""
        return generate_latest(self._exposition_registry())

    def _exposition_registry(self) -> CollectorRegistry:
        if self.registry is not None:
            return self.registry
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.multiprocess_dir))
        registry.register(self._database)
        return registry


def models_of(names: Iterable[str], served_by: Callable[[str], str]) -> list[str]:
    """The configured models behind public names, each once (the gauges' label values)."""
    return sorted({served_by(name) for name in names})
