"""Workers known to this coordinator: each one's address, channel, credit and deadline.

The registry is shared by the parts of one coordinator (tm.coordinator.state): the RPC
handlers add workers and take their adverts, the dispatcher plans from their credit and
reserves it, liveness removes the workers it declares lost.

A link's credit (tm.core.dispatch) changes only by its worker's adverts (`advertise`) and
the dispatcher's reservations and releases, all on the one trio thread. A worker is alive
while its `deadline` scope has not expired (tm.coordinator.liveness moves it on every
heartbeat or report); at most one link per worker id is registered, and a replaced link
is `retired` so its end is not mistaken for the worker's loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from tm import metrics
from tm.aio.grpc import WorkerPeer
from tm.core import dispatch
from tm.core.dispatch import Credit
from tm.proto.gen.taskmaster import v1 as pb


def advertised(credit: Credit, capacity: pb.Capacity) -> Credit:
    """`credit` after the worker's advert `capacity` (ignored if older than the one held)."""
    return dispatch.advertise(
        credit,
        capacity=capacity.capacity,
        free_slots=capacity.free_slots,
        accepted_total=capacity.accepted_total,
        draining=capacity.draining,
        released_total=capacity.released_total,
    )


@dataclass(eq=False)
class WorkerLink:
    worker_id: str
    address: str
    peer: WorkerPeer
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

    def advertise(self, capacity: pb.Capacity | None) -> bool:
        """Take the worker's advert (from a heartbeat, report or push answer); returns
        True when it has more room than before, i.e. the dispatcher should look again."""
        if capacity is None or capacity.capacity < 1:
            return False
        before = self.credit.available
        self.credit = advertised(self.credit, capacity)
        metrics.WORKER_FREE_SLOTS.labels(self.worker_id).set(self.credit.available)
        return self.credit.available > before


class Registry:
    def __init__(self) -> None:
        self._links: dict[str, WorkerLink] = {}

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
