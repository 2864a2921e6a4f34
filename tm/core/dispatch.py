"""Credit-based dispatch: how many tasks each worker may be sent, and to whom they go.

A worker advertises `free_slots` together with `accepted_total`, the number of tasks it has
ever accepted. The coordinator counts `sent_total`, every task it has pushed to that worker
(in flight or accepted). Tasks sent that the advert does not yet account for are
`sent_total - accepted_total`, so the credit left is

    available = free_slots - (sent_total - accepted_total), clamped to [0, capacity].

This closes the race where a heartbeat, written before a push arrived, would otherwise
re-advertise slots the push already used. Adverts are applied only if they are not older
than the one held: `accepted_total` and `released_total` (tasks the worker has ever let
go of) never go back, so an advert with either below the held one was written earlier —
a heartbeat overtaken by a report, say — and would shrink the credit wrongly.

Invariant: the tasks a worker holds never exceed the capacity it advertised, because every
push is planned out of `available`, and the worker refuses anything beyond it anyway.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Credit:
    worker_id: str
    capacity: int
    free_slots: int
    accepted_total: int = 0
    sent_total: int = 0
    draining: bool = False
    released_total: int = 0

    @property
    def in_flight(self) -> int:
        return max(0, self.sent_total - self.accepted_total)

    @property
    def available(self) -> int:
        if self.draining:
            return 0
        return max(0, min(self.capacity, self.free_slots - self.in_flight))


def advertise(
    credit: Credit,
    *,
    capacity: int,
    free_slots: int,
    accepted_total: int,
    draining: bool,
    released_total: int = 0,
) -> Credit:
    """Apply a worker's capacity report, unless it is older than the one already held."""
    if accepted_total < credit.accepted_total or released_total < credit.released_total:
        return credit
    return replace(
        credit,
        capacity=capacity,
        free_slots=min(free_slots, capacity),
        accepted_total=accepted_total,
        released_total=released_total,
        # The worker has accepted more than this coordinator sent it (it served another,
        # or this one restarted): nothing of ours can still be in flight beyond that.
        sent_total=max(credit.sent_total, accepted_total),
        draining=draining,
    )


def reserve(credit: Credit, count: int) -> Credit:
    """Account for `count` tasks about to be pushed. Refuses to overdraw."""
    if count < 0 or count > credit.available:
        raise ValueError(f"cannot reserve {count} slots; {credit.available} available")
    return replace(credit, sent_total=credit.sent_total + count)


def release(credit: Credit, count: int) -> Credit:
    """Give back slots of a push that the worker refused or that never arrived."""
    return replace(credit, sent_total=max(credit.accepted_total, credit.sent_total - count))


def plan(credits: Iterable[Credit], limit: int, *, rotation: int = 0) -> list[str]:
    """Worker ids for up to `limit` tasks, one per slot, in the order tasks should fill them.

    Each next slot goes to the worker with the most credit left (least loaded), ties broken
    by a rotation so that equal workers take turns across calls. Taking a prefix of the
    result therefore still spreads tasks evenly: with three idle workers, three due tasks
    land on three different workers.
    """
    pool = [c for c in credits if c.available > 0]
    if not pool or limit <= 0:
        return []
    count = len(pool)
    heap = [(-c.available, (i - rotation) % count, c.worker_id) for i, c in enumerate(pool)]
    heapq.heapify(heap)
    slots: list[str] = []
    while heap and len(slots) < limit:
        negative, order, worker_id = heapq.heappop(heap)
        slots.append(worker_id)
        if negative + 1 < 0:
            heapq.heappush(heap, (negative + 1, order, worker_id))
    return slots


def replace_available(credit: Credit, available: int) -> Credit:
    """A copy of `credit` that offers at most `available` slots (for planning only)."""
    if available >= credit.available:
        return credit
    return replace(credit, free_slots=credit.in_flight + max(0, available))
