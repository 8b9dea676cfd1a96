"""A fleet in one process: the scheduling policy against plain FIFO, on SQLite and PostgreSQL.

N worker slots, each an asyncio task with its own worker id, claim through the real store
(`JobStore.claim`, the real claim statement) and run a GPU stand-in: a sleep per denoising
step and a sleep per model load (a slot keeps one model loaded, as a GPU holds one). Each
policy runs in a fresh database of its own, in the same invocation (`--policy fifo` is the
baseline; both run by default).

- flood: one key queues `--flood` jobs at once (the bulk enqueue), three light keys each
  submit one job every `--light-interval` seconds for `--seconds`; reported: the light keys'
  p50/p95 wait (submit to claim; a light job still queued at the end counts with its wait so
  far, a lower bound, marked >=), and completed jobs per second over the window.
- thrash: two models alternating (A, B, A, B...) from one key, `--thrash` jobs, two slots
  with one model loaded each (B's jobs take 1.5x A's, so the slots drift apart); reported:
  loads, seconds loading, jobs per second to drain. Under `fair` the slots claim with warm
  routing (`warm` = the model the slot holds, `VIDEOSERVE_WARM_SKIP_SECONDS` = `--warm-skip`);
  `fifo` is plain oldest-first, no warm preference, as before both.

Goals (issue 27): light p95 wait <= 2 job durations under the flood (FIFO: the flood);
throughput within 5 % of FIFO's; thrash loads at most 10 % of FIFO's. Loopback databases
only; bounded in count and time.

    python -m bench.fleet [--databases sqlite,postgresql] [--policy fair,fifo] \
        [--slots 4] [--steps 10] [--step-seconds 0.01] [--load-seconds 0.2] [--flood 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from bench.queue import drop_pg, fresh_pg
from videoserve.jobs.fairness import SchedulingPolicy
from videoserve.jobs.keys import KeyStore
from videoserve.jobs.records import JobResult
from videoserve.jobs.store import JobStore, NewJob, Policy
from videoserve.settings import Settings

LIGHT_KEYS = 3


@dataclasses.dataclass(frozen=True)
class StandIn:
    """The GPU stand-in: how long a job and a model load take."""

    steps: int
    step_seconds: float
    load_seconds: float

    @property
    def job_seconds(self) -> float:
        return self.steps * self.step_seconds


@dataclasses.dataclass
class Slots:
    """What the worker slots did."""

    completed: int = 0
    target: int = 0  # set `done` once this many completed (0: never)
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    loads: int = 0
    load_seconds: float = 0.0
    started: dict[str, float] = dataclasses.field(default_factory=dict)  # job id -> claimed


@dataclasses.dataclass(frozen=True)
class FloodFigures:
    light_p50: float
    light_p95: float
    censored: int  # light jobs still queued at the end (their waits are lower bounds)
    jobs_per_second: float


@dataclasses.dataclass(frozen=True)
class ThrashFigures:
    loads: int
    load_seconds: float
    jobs_per_second: float


def _job(key_id: str, model: str) -> NewJob:
    return NewJob(
        id="video_" + secrets.token_hex(12),
        api_key_id=key_id,
        model=model,
        served_by=model,
        params={"prompt": "fleet", "duration": 4},
        max_attempts=3,
    )


async def _slot(
    store: JobStore,
    name: str,
    models: Sequence[str],
    stand_in: StandIn,
    slots: Slots,
    stop: asyncio.Event,
    loaded: str | None = None,
    steps: dict[str, int] | None = None,
) -> None:
    """One worker slot: claim, load the job's model if another is loaded, run, complete.
    `steps`: a model's steps when not the stand-in's."""
    steps = steps or {}
    while not stop.is_set():
        warm = [loaded] if loaded is not None else []
        claimed = await store.claim(name, list(models), lease_seconds=60, warm=warm)
        if claimed is None:
            await store.wait_for_queued(0.05)
            continue
        job, lease = claimed
        slots.started[job.id] = job.started_at or time.time()
        if loaded != job.served_by:
            await asyncio.sleep(stand_in.load_seconds)
            slots.loads += 1
            slots.load_seconds += stand_in.load_seconds
            loaded = job.served_by
        began = time.monotonic()
        for _ in range(steps.get(job.served_by, stand_in.steps)):
            await asyncio.sleep(stand_in.step_seconds)
        seconds = time.monotonic() - began
        result = JobResult(
            "x", "x.jpg", job.served_by, 64, 64, 8.0, 17, 2.125, inference_time=seconds
        )
        if await store.complete(lease, result, retention_seconds=3600):
            slots.completed += 1
            if slots.completed == slots.target:
                slots.done.set()


@contextlib.asynccontextmanager
async def _store(
    url: str, policy: SchedulingPolicy, stand_in: StandIn, warm_skip: float = 0.0
) -> AsyncIterator[JobStore]:
    """A store under `policy`; with FIFO, no warm preference either (today's plain claim)."""
    store = JobStore.open(
        Settings(database_url=url).resolved_database_url(),
        policy=Policy(
            scheduling=policy,
            default_job_seconds=stand_in.job_seconds,
            warm_skip_seconds=0.0 if policy == SchedulingPolicy.FIFO else warm_skip,
        ),
    )
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def flood(
    url: str, policy: SchedulingPolicy, stand_in: StandIn, args: argparse.Namespace
) -> FloodFigures:
    async with _store(url, policy, stand_in) as store:
        keys = KeyStore(store.database)
        heavy = (await keys.create("heavy"))[0].id
        light = [(await keys.create(f"light-{n}"))[0].id for n in range(LIGHT_KEYS)]
        model = "flood-" + secrets.token_hex(3)
        await store.enqueue_many([_job(heavy, model) for _ in range(args.flood)])
        slots, stop = Slots(), asyncio.Event()
        workers = [
            asyncio.create_task(_slot(store, f"w{n}", [model], stand_in, slots, stop, model))
            for n in range(args.slots)
        ]
        submitted: dict[str, float] = {}
        light_stop = asyncio.Event()  # one interval before the end: each has time to start

        async def light_key(key_id: str, offset: float) -> None:
            await asyncio.sleep(offset)
            while not light_stop.is_set():
                job, _ = await store.create(_job(key_id, model))
                submitted[job.id] = job.created_at
                await asyncio.sleep(args.light_interval)

        interval = args.light_interval
        lights = [
            asyncio.create_task(light_key(key_id, interval * (n + 1) / (LIGHT_KEYS + 1)))
            for n, key_id in enumerate(light)
        ]
        began = time.monotonic()
        await asyncio.sleep(max(0.0, args.seconds - interval))
        light_stop.set()
        await asyncio.sleep(min(args.seconds, interval))
        completed = slots.completed
        elapsed = time.monotonic() - began
        stop.set()
        await asyncio.gather(*lights, *workers)
        end = time.time()
        waits = [slots.started.get(job_id, end) - created for job_id, created in submitted.items()]
        censored = sum(job_id not in slots.started for job_id in submitted)
        quantiles = statistics.quantiles(waits, n=20, method="inclusive") if waits else [0.0]
        return FloodFigures(
            light_p50=statistics.median(waits) if waits else 0.0,
            light_p95=quantiles[-1],
            censored=censored,
            jobs_per_second=completed / elapsed,
        )


async def thrash(
    url: str, policy: SchedulingPolicy, stand_in: StandIn, args: argparse.Namespace
) -> ThrashFigures:
    async with _store(url, policy, stand_in, args.warm_skip) as store:
        key = (await KeyStore(store.database).create("alternating"))[0].id
        tag = secrets.token_hex(3)
        models = [f"a-{tag}", f"b-{tag}"]
        for n in range(args.thrash):  # one by one: each its own created_at, A, B, A, B...
            await store.create(_job(key, models[n % 2]))
        slots, stop = Slots(target=args.thrash), asyncio.Event()
        # B's jobs take half again as long as A's: the two slots drift apart, and FIFO then
        # hands a slot the other model's job about every other time (as on a real fleet).
        steps = {models[1]: stand_in.steps * 3 // 2}
        began = time.monotonic()
        workers = [
            asyncio.create_task(
                _slot(store, f"t{n}", models, stand_in, slots, stop, models[n], steps)
            )
            for n in range(2)
        ]
        bound = args.thrash * (stand_in.job_seconds * 2 + stand_in.load_seconds) + 60
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(slots.done.wait(), bound)
        elapsed = time.monotonic() - began
        stop.set()
        await asyncio.gather(*workers)
        return ThrashFigures(slots.loads, slots.load_seconds, slots.completed / elapsed)


async def one_policy(
    url: str, policy: SchedulingPolicy, stand_in: StandIn, args: argparse.Namespace
) -> tuple[FloodFigures, ThrashFigures]:
    return await flood(url, policy, stand_in, args), await thrash(url, policy, stand_in, args)


@contextlib.contextmanager
def fresh_database(database: str, pg: str):  # type: ignore[no-untyped-def]
    """A new, empty database of the kind named: a SQLite file, or a PostgreSQL database."""
    if database == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / 'fleet.db'}"
        return
    url, name = fresh_pg(pg)
    try:
        yield url
    finally:
        drop_pg(pg, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--policy", default="fair,fifo", help="policies to run; fifo: baseline")
    parser.add_argument("--slots", type=int, default=4, help="worker slots in the flood")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--step-seconds", type=float, default=0.01)
    parser.add_argument("--load-seconds", type=float, default=0.2)
    parser.add_argument("--flood", type=int, default=1000, help="jobs the heavy key queues")
    parser.add_argument("--light-interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="the flood's window")
    parser.add_argument("--thrash", type=int, default=40, help="alternating jobs")
    parser.add_argument("--rounds", type=int, default=1, help="policies alternate per round")
    parser.add_argument(
        "--warm-skip", type=float, default=300.0, help="warm routing's bound, s (fair only)"
    )
    args = parser.parse_args()
    stand_in = StandIn(args.steps, args.step_seconds, args.load_seconds)
    policies = [SchedulingPolicy(p.strip()) for p in args.policy.split(",")]
    print(
        f"stand-in: {args.steps} steps x {args.step_seconds * 1000:g} ms = "
        f"{stand_in.job_seconds * 1000:g} ms a job, {args.load_seconds * 1000:g} ms a load; "
        f"flood: {args.flood} jobs, {LIGHT_KEYS} light keys every {args.light_interval:g} s "
        f"for {args.seconds:g} s on {args.slots} slots; thrash: {args.thrash} jobs, 2 slots"
    )
    header = (
        "| database | round | policy | light p50 | light p95 (job durations) | flood jobs/s "
        "| thrash loads | seconds loading | thrash jobs/s |"
    )
    print(header)
    print("|---" * 9 + "|")
    for database in args.databases.split(","):
        for round_, policy in ((r, p) for r in range(1, args.rounds + 1) for p in policies):
            with fresh_database(database.strip(), args.pg) as url:
                f, t = asyncio.run(one_policy(url, policy, stand_in, args))
            mark = ">= " if f.censored else ""
            print(
                f"| {database} | {round_} | {policy.value} | {mark}{f.light_p50 * 1000:.0f} ms "
                f"| {mark}{f.light_p95 * 1000:.0f} ms "
                f"({f.light_p95 / stand_in.job_seconds:.1f}) | {f.jobs_per_second:.1f} "
                f"| {t.loads} | {t.load_seconds:.1f} | {t.jobs_per_second:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
