"""Standing claims: an idle worker slot of this process lets the next submit claim for it.

Why: a slot woken by a submit, then claiming in a statement of its own, cost every job that
found a worker idle a wake-up and a database round trip after the submit's commit, about a
millisecond of the ~10 ms a job spends outside its model and encoder on the 2-core machine.
A submit that finds a slot standing by runs that slot's claim in its own transaction instead,
after its INSERT, and hands the slot what it claimed. It is the worker's claim statement
(`HotStatements.claim`), so the order (the oldest claimable job of the slot's models, as a rule
the one just submitted), the lease, the fencing token and the per-key cap are the same.

Only within one process and one event loop: a worker elsewhere hears of the job as before
(its database's notification, or its poll), and takes it with a claim of its own.

Warm routing here: a submit takes the offer of a slot that has the job's model loaded, if one
stands by, else the oldest offer. The claim it runs is the plain one, not the warm-first one:
a slot stands by only when nothing of its models was claimable, so the job just submitted is
as a rule the one it takes, and a preference among queued jobs has nothing to choose from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from videoserve.jobs.records import Job, Lease


@dataclass(eq=False)
class StandingClaim:
    """One idle slot's offer; `taken` ends with the job a submit claimed for it, or None when
    that submit claimed nothing (it failed, or no job of the slot's models was claimable)."""

    worker_id: str
    served_by: tuple[str, ...] | None  # None: every model
    lease_seconds: float
    loop: asyncio.AbstractEventLoop
    warm: frozenset[str] = frozenset()  # the models its worker had loaded when it stood by
    taken: asyncio.Future[tuple[Job, Lease] | None] = field(init=False)

    def __post_init__(self) -> None:
        self.taken = self.loop.create_future()

    def serves(self, served_by: str) -> bool:
        return self.served_by is None or served_by in self.served_by

    def hand(self, claimed: tuple[Job, Lease] | None) -> None:
        """What the submit that took this offer claimed (once; later calls do nothing)."""
        if not self.taken.done():
            self.taken.set_result(claimed)


class StandingClaims:
    """This process's idle slots, oldest offer first. Used from the event loop only."""

    def __init__(self) -> None:
        self._offers: list[StandingClaim] = []

    def __len__(self) -> int:
        """How many slots stand by now."""
        return len(self._offers)

    def stand_by(
        self,
        worker_id: str,
        served_by: Sequence[str] | None,
        lease_seconds: float,
        warm: Sequence[str] = (),
    ) -> StandingClaim:
        """Offer an idle slot to the next submit of one of `served_by`'s models (`warm`: those
        its worker has loaded, which a submit of theirs prefers)."""
        offer = StandingClaim(
            worker_id,
            None if served_by is None else tuple(served_by),
            lease_seconds,
            asyncio.get_running_loop(),
            frozenset(warm),
        )
        self._offers.append(offer)
        return offer

    def withdraw(self, offer: StandingClaim) -> bool:
        """Take the offer back. False when a submit has taken it already: then `offer.taken`
        will tell what that submit claimed, and the slot must run (or hand back) that job."""
        try:
            self._offers.remove(offer)
        except ValueError:
            return False
        return True

    def take(self, served_by: str) -> StandingClaim | None:
        """The oldest offer, made in this event loop, of a slot with `served_by` loaded, else
        of one serving it; it is no longer offered to anyone else."""
        if not self._offers:
            return None
        loop = asyncio.get_running_loop()
        chosen = None
        for offer in self._offers:
            if offer.loop is loop and offer.serves(served_by):
                if served_by in offer.warm:
                    chosen = offer
                    break
                chosen = chosen or offer
        if chosen is not None:
            self._offers.remove(chosen)
        return chosen
