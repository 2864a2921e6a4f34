"""Workers known to this coordinator, each with its credit and its heartbeat deadline.

A worker is alive while its `deadline` scope has not expired; every heartbeat (or report)
moves the deadline forward. When it expires, the coordinator declares the worker lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from tm.aio.grpc import Peer
from tm.core import dispatch
from tm.core.dispatch import Credit


@dataclass(eq=False)
class WorkerLink:
    worker_id: str
    address: str
    peer: Peer
    credit: Credit
    concurrency: int
    # Cancelled (by deadline) when the worker is silent too long.
    deadline: trio.CancelScope = field(default_factory=trio.CancelScope)
    # Push failures in a row; while > 0 the worker gets nothing until `resume_at`.
    push_failures: int = 0
    resume_at: float = 0.0
    # Set when the link ends on purpose (replaced by a new registration, shutdown).
    retired: bool = False

    def __repr__(self) -> str:
        c = self.credit
        return (
            f"<WorkerLink {self.worker_id} {self.address} "
            f"[credit {c.available}/{c.capacity}, in flight {c.in_flight}]>"
        )

    def usable_credit(self, now: float) -> Credit:
        """The credit to plan with: none while backing off after failed pushes."""
        if self.push_failures and now < self.resume_at:
            return dispatch.replace_available(self.credit, 0)
        return self.credit


class Registry:
    def __init__(self) -> None:
        self._links: dict[str, WorkerLink] = {}
        self.credit_changed = trio.Event()

    def __len__(self) -> int:
        return len(self._links)

    def __repr__(self) -> str:
        return f"<Registry [{len(self._links)} workers, {self.available()} free slots]>"

    def get(self, worker_id: str) -> WorkerLink | None:
        return self._links.get(worker_id)

    def add(self, link: WorkerLink) -> WorkerLink | None:
        """Add `link`; returns the link it replaces (same worker id), if any."""
        old = self._links.get(link.worker_id)
        self._links[link.worker_id] = link
        self.poke()
        return old

    def remove(self, link: WorkerLink) -> bool:
        if self._links.get(link.worker_id) is link:
            del self._links[link.worker_id]
            return True
        return False

    def links(self) -> list[WorkerLink]:
        return list(self._links.values())

    def credits(self, now: float) -> list[Credit]:
        return [link.usable_credit(now) for link in self._links.values()]

    def available(self) -> int:
        return sum(link.credit.available for link in self._links.values())

    def poke(self) -> None:
        """Wake whoever waits for credit to change."""
        self.credit_changed.set()
        self.credit_changed = trio.Event()
