"""The account service: a key's credits and its usage history, for the routes that show them.

Beside `JobService`, and like it the only way routes reach these records: who may see whose
account is decided here, not in the route.
"""

from __future__ import annotations

from dataclasses import dataclass

from videoserve import errors
from videoserve.jobs import ledger, listing
from videoserve.jobs.keys import ANONYMOUS
from videoserve.jobs.records import ApiKey, Job
from videoserve.jobs.store import JobStore


@dataclass(frozen=True)
class UsagePage:
    """One page of a key's requests with what each was refunded."""

    jobs: list[Job]
    refunds: dict[str, float]  # job id -> credits refunded
    has_more: bool


class AccountService:
    def __init__(self, store: JobStore) -> None:
        self.store = store

    @staticmethod
    def scope(key: ApiKey, requested: str | None) -> str | None:
        """Whose rows the caller sees: its own; an admin's pick with `?key=`, else every
        key's (None)."""
        if requested is not None:
            if not key.is_admin:
                raise errors.Forbidden("?key= needs an admin key (videoserve keys create --admin)")
            return requested
        return None if key.is_admin else key.id

    async def account(self, key: ApiKey, requested: str | None = None) -> ledger.Account:
        """The credits of the caller's key, or of `requested` for an admin key."""
        target = self.scope(key, requested) or key.id
        if target == ANONYMOUS.id:  # auth is off: nothing is charged
            return ledger.Account(ANONYMOUS.id, ANONYMOUS.name, True, 0.0, 0.0, 0.0, 0.0)
        found = await ledger.account(self.store.database, target)
        if found is None:
            raise errors.NotFound(f"key '{target}' not found")
        return found

    async def usage(
        self, key: ApiKey, requested: str | None = None, *, after: str | None, limit: int
    ) -> UsagePage:
        """A page of unexpired requests, newest first, with their refunds."""
        jobs, has_more = await listing.list_jobs(
            self.store.database, self.scope(key, requested), after=after, limit=limit
        )
        refunds = await ledger.refunds_for(self.store.database, [job.id for job in jobs])
        return UsagePage(jobs, refunds, has_more)
