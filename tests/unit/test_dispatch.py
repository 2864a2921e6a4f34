"""tm.core.dispatch: credit accounting and the plan of which worker gets which task.

The state machine at the end plays a coordinator and its workers exchanging pushes and
capacity adverts over a network that delays, reorders and drops messages, and checks the
module's invariant: the tasks a worker holds plus the tasks on their way to it never exceed
its capacity, so no push ever has to be refused for lack of room.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tm.core.dispatch import Credit, advertise, plan, release, reserve

FAST = settings(max_examples=150, deadline=None, database=None)


@st.composite
def credits(draw: st.DrawFn, worker_id: str | None = None) -> Credit:
    capacity = draw(st.integers(min_value=0, max_value=8))
    accepted = draw(st.integers(min_value=0, max_value=50))
    return Credit(
        worker_id=worker_id if worker_id is not None else draw(st.text(min_size=1, max_size=4)),
        capacity=capacity,
        free_slots=draw(st.integers(min_value=0, max_value=capacity)),
        accepted_total=accepted,
        sent_total=accepted + draw(st.integers(min_value=0, max_value=10)),
        draining=draw(st.booleans()),
        released_total=draw(st.integers(min_value=0, max_value=accepted)),
    )


@st.composite
def fleets(draw: st.DrawFn, max_size: int = 6) -> list[Credit]:
    count = draw(st.integers(min_value=0, max_value=max_size))
    return [draw(credits(worker_id=f"w{i}")) for i in range(count)]


def idle(worker_id: str, capacity: int) -> Credit:
    return Credit(worker_id, capacity=capacity, free_slots=capacity)


# --- Credit -----------------------------------------------------------------------------


def test_available_examples() -> None:
    assert idle("a", 4).available == 4
    assert Credit("a", 4, free_slots=4, accepted_total=3, sent_total=5).available == 2
    assert Credit("a", 4, free_slots=1, accepted_total=3, sent_total=5).available == 0
    assert Credit("a", 4, free_slots=4, draining=True).available == 0
    # An advert newer than every send leaves nothing in flight.
    assert Credit("a", 4, free_slots=4, accepted_total=9, sent_total=5).in_flight == 0


@FAST
@given(credits())
def test_available_is_within_zero_and_capacity(credit: Credit) -> None:
    assert 0 <= credit.available <= max(0, credit.capacity)
    assert credit.available <= credit.free_slots
    if credit.draining:
        assert credit.available == 0


# --- reserve / release ------------------------------------------------------------------


@FAST
@given(credits(), st.data())
def test_reserve_takes_exactly_what_it_is_asked(credit: Credit, data: st.DataObject) -> None:
    count = data.draw(st.integers(min_value=0, max_value=credit.available))
    after = reserve(credit, count)
    assert after.sent_total == credit.sent_total + count
    assert after.available == credit.available - count
    assert release(after, count) == credit


@FAST
@given(credits(), st.data())
def test_reserve_refuses_to_overdraw(credit: Credit, data: st.DataObject) -> None:
    count = data.draw(
        st.integers(min_value=credit.available + 1) | st.integers(max_value=-1)
    )
    with pytest.raises(ValueError, match=f"cannot reserve {count} slots"):
        reserve(credit, count)


def test_reserve_on_draining_worker_refuses() -> None:
    with pytest.raises(ValueError, match="0 available"):
        reserve(Credit("a", 4, free_slots=4, draining=True), 1)


@FAST
@given(credits(), st.integers(min_value=0, max_value=30))
def test_release_never_goes_below_what_was_accepted(credit: Credit, count: int) -> None:
    after = release(credit, count)
    assert after.sent_total >= credit.accepted_total
    assert after.sent_total == max(credit.accepted_total, credit.sent_total - count)
    assert after.available >= credit.available


# --- advertise --------------------------------------------------------------------------


@FAST
@given(credits(), st.integers(0, 8), st.integers(0, 10), st.integers(0, 60), st.booleans(),
       st.integers(0, 60))
def test_advertise_applies_only_adverts_not_older(
    credit: Credit, capacity: int, free: int, accepted: int, draining: bool, released: int
) -> None:
    after = advertise(
        credit, capacity=capacity, free_slots=free, accepted_total=accepted, draining=draining,
        released_total=released,
    )
    if accepted < credit.accepted_total or released < credit.released_total:
        assert after == credit
        return
    assert after.worker_id == credit.worker_id
    assert after.capacity == capacity
    assert after.free_slots == min(free, capacity)
    assert after.accepted_total == accepted
    assert after.released_total == released
    assert after.sent_total == max(credit.sent_total, accepted)
    assert after.draining is draining
    assert after.available <= capacity


def test_stale_heartbeat_after_a_push_does_not_give_slots_back() -> None:
    credit = advertise(idle("w", 2), capacity=2, free_slots=2, accepted_total=0, draining=False)
    credit = reserve(credit, 2)  # both slots pushed
    assert credit.available == 0
    # A heartbeat the worker wrote before the push arrived says 2 free, 0 accepted.
    credit = advertise(credit, capacity=2, free_slots=2, accepted_total=0, draining=False)
    assert credit.available == 0
    # The worker accepts both and says so; one finishes.
    credit = advertise(credit, capacity=2, free_slots=1, accepted_total=2, draining=False)
    assert credit.available == 1
    # A heartbeat even older than that is ignored altogether.
    assert advertise(credit, capacity=2, free_slots=2, accepted_total=1, draining=False) == credit


def test_a_heartbeat_overtaken_by_a_report_does_not_take_slots_back() -> None:
    """Same accepted_total, fewer released: written before the report that arrived first.
    Applying it would shrink the credit under a push already planned (which then has to be
    handed back and dispatched again)."""
    credit = advertise(idle("w", 4), capacity=4, free_slots=0, accepted_total=4,
                       draining=False, released_total=0)
    # The report, written after two tasks finished, arrives first.
    credit = advertise(credit, capacity=4, free_slots=2, accepted_total=4, draining=False,
                       released_total=2)
    assert credit.available == 2
    # The heartbeat written before they finished arrives second: ignored.
    late = advertise(credit, capacity=4, free_slots=0, accepted_total=4, draining=False,
                     released_total=0)
    assert late == credit
    assert late.available == 2


def test_draining_advert_stops_dispatch() -> None:
    credit = advertise(idle("w", 3), capacity=3, free_slots=3, accepted_total=0, draining=True)
    assert credit.available == 0
    assert plan([credit, idle("x", 1)], 5) == ["x"]


# --- plan -------------------------------------------------------------------------------


@FAST
@given(fleets(), st.integers(min_value=-2, max_value=40), st.integers(-10, 10))
def test_plan_fills_credit_and_no_more(fleet: list[Credit], limit: int, rotation: int) -> None:
    slots = plan(fleet, limit, rotation=rotation)
    by_id = {c.worker_id: c for c in fleet}
    counts = Counter(slots)
    for worker_id, count in counts.items():
        assert count <= by_id[worker_id].available
        assert not by_id[worker_id].draining
    assert len(slots) == max(0, min(limit, sum(c.available for c in fleet)))


@FAST
@given(fleets(), st.integers(min_value=1, max_value=40), st.integers(0, 10))
def test_plan_gives_each_slot_to_the_least_loaded(
    fleet: list[Credit], limit: int, rotation: int
) -> None:
    slots = plan(fleet, limit, rotation=rotation)
    left = {c.worker_id: c.available for c in fleet}
    for worker_id in slots:
        assert left[worker_id] == max(left.values())
        left[worker_id] -= 1


@FAST
@given(st.integers(min_value=1, max_value=8), st.integers(min_value=1, max_value=5),
       st.integers(min_value=0, max_value=100))
def test_k_tasks_on_k_equal_idle_workers_go_to_k_workers(
    k: int, capacity: int, rotation: int
) -> None:
    fleet = [idle(f"w{i}", capacity) for i in range(k)]
    slots = plan(fleet, k, rotation=rotation)
    assert sorted(slots) == sorted(c.worker_id for c in fleet)
    # Every prefix is as even as it can be, too.
    full = plan(fleet, k * capacity, rotation=rotation)
    for n in range(1, len(full) + 1):
        counts = Counter(full[:n])
        assert max(counts.values()) - min(counts.get(c.worker_id, 0) for c in fleet) <= 1


def test_rotation_takes_turns_between_equal_workers() -> None:
    fleet = [idle("a", 2), idle("b", 2), idle("c", 2)]
    firsts = [plan(fleet, 1, rotation=r)[0] for r in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]
    assert plan(fleet, 6, rotation=1) == ["b", "c", "a", "b", "c", "a"]


def test_plan_prefers_the_emptier_worker() -> None:
    fleet = [Credit("busy", 4, free_slots=1), idle("free", 4)]
    assert plan(fleet, 3) == ["free", "free", "free"]
    assert Counter(plan(fleet, 10)) == {"free": 4, "busy": 1}


def test_plan_with_nothing_to_give() -> None:
    assert plan([], 5) == []
    assert plan([idle("a", 2)], 0) == []
    assert plan([idle("a", 0), Credit("b", 2, free_slots=0)], 5) == []


# --- a coordinator and its workers, over an unreliable network ---------------------------


@dataclass(frozen=True)
class Advert:
    worker_id: str
    capacity: int
    free_slots: int
    accepted_total: int
    draining: bool

    def apply(self, credit: Credit) -> Credit:
        return advertise(credit, capacity=self.capacity, free_slots=self.free_slots,
                         accepted_total=self.accepted_total, draining=self.draining)


@dataclass
class Worker:
    worker_id: str
    capacity: int
    held: int = 0
    accepted_total: int = 0
    draining: bool = False

    def snapshot(self) -> Advert:
        return Advert(self.worker_id, self.capacity, self.capacity - self.held,
                      self.accepted_total, self.draining)


@dataclass
class Push:
    worker_id: str
    tasks: list[int] = field(default_factory=list)


class DispatchMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.workers: dict[str, Worker] = {}
        self.credits: dict[str, Credit] = {}
        self.pushes: list[Push] = []  # sent by the coordinator, not yet arrived
        self.adverts: list[Advert] = []  # in the network
        self.backlog = 0
        self.next_task = 0
        self.rotation = 0

    @rule(capacity=st.integers(min_value=1, max_value=4))
    @precondition(lambda self: len(self.workers) < 3)
    def register(self, capacity: int) -> None:
        worker = Worker(f"w{len(self.workers)}", capacity)
        self.workers[worker.worker_id] = worker
        # As the coordinator's register does: zero credit, then the registration's advert.
        self.credits[worker.worker_id] = worker.snapshot().apply(
            Credit(worker.worker_id, capacity, 0)
        )

    @rule(count=st.integers(min_value=1, max_value=6))
    def submit(self, count: int) -> None:
        self.backlog += count

    @rule(limit=st.integers(min_value=1, max_value=8))
    def dispatch(self, limit: int) -> None:
        limit = min(limit, self.backlog)
        before = {w: c.available for w, c in self.credits.items()}
        slots = plan(self.credits.values(), limit, rotation=self.rotation)
        self.rotation += 1
        assert len(slots) == min(limit, sum(before.values()))
        tasks = list(range(self.next_task, self.next_task + len(slots)))
        self.next_task += len(slots)
        self.backlog -= len(slots)
        # As the claim pairs them (the i-th oldest due task with slots[i]: see
        # tests/integration/test_claims.py) and the coordinator pushes them, per worker.
        batches: dict[str, list[int]] = {}
        for task, slot in zip(tasks, slots, strict=True):
            batches.setdefault(slot, []).append(task)
        for worker_id, batch in batches.items():
            assert len(batch) <= before[worker_id]
            # Never raises: the plan was made out of available credit.
            self.credits[worker_id] = reserve(self.credits[worker_id], len(batch))
            self.pushes.append(Push(worker_id, batch))

    @rule(data=st.data())
    @precondition(lambda self: self.pushes)
    def push_arrives(self, data: st.DataObject) -> None:
        push = self.pushes.pop(data.draw(st.integers(0, len(self.pushes) - 1)))
        worker = self.workers[push.worker_id]
        if worker.draining:
            # Refused whole; the coordinator gives the credit back and requeues the tasks.
            self.credits[push.worker_id] = release(self.credits[push.worker_id], len(push.tasks))
            self.backlog += len(push.tasks)
            return
        # The point of credit: a push that arrives always fits.
        assert worker.held + len(push.tasks) <= worker.capacity, (worker, push)
        worker.held += len(push.tasks)
        worker.accepted_total += len(push.tasks)
        if data.draw(st.booleans()):
            # The push's answer carries a fresh advert (delivered like any other).
            self.adverts.append(worker.snapshot())

    @rule(data=st.data())
    @precondition(lambda self: self.pushes)
    def push_lost(self, data: st.DataObject) -> None:
        """The push definitely never reached the worker (connection refused)."""
        push = self.pushes.pop(data.draw(st.integers(0, len(self.pushes) - 1)))
        self.credits[push.worker_id] = release(self.credits[push.worker_id], len(push.tasks))
        self.backlog += len(push.tasks)

    @rule(data=st.data())
    @precondition(lambda self: any(w.held for w in self.workers.values()))
    def task_finishes(self, data: st.DataObject) -> None:
        busy = sorted(w for w, worker in self.workers.items() if worker.held)
        self.workers[data.draw(st.sampled_from(busy))].held -= 1

    @rule(data=st.data())
    @precondition(lambda self: self.workers)
    def heartbeat(self, data: st.DataObject) -> None:
        worker_id = data.draw(st.sampled_from(sorted(self.workers)))
        self.adverts.append(self.workers[worker_id].snapshot())

    @rule(data=st.data())
    @precondition(lambda self: self.workers)
    def toggle_drain(self, data: st.DataObject) -> None:
        worker = self.workers[data.draw(st.sampled_from(sorted(self.workers)))]
        worker.draining = not worker.draining

    @rule(data=st.data())
    @precondition(lambda self: self.adverts)
    def advert_arrives(self, data: st.DataObject) -> None:
        """Any advert in the network, in any order: older heartbeats may arrive after pushes."""
        advert = self.adverts.pop(data.draw(st.integers(0, len(self.adverts) - 1)))
        before = self.credits[advert.worker_id]
        after = advert.apply(before)
        self.credits[advert.worker_id] = after
        if advert.accepted_total < before.accepted_total:
            assert after == before
        else:
            assert after.free_slots == advert.free_slots
            assert after.draining is advert.draining
            if advert.draining:
                assert after.available == 0
        assert after.accepted_total >= before.accepted_total

    @rule(data=st.data())
    @precondition(lambda self: self.adverts)
    def advert_lost(self, data: st.DataObject) -> None:
        self.adverts.pop(data.draw(st.integers(0, len(self.adverts) - 1)))

    @invariant()
    def held_and_in_flight_fit_capacity(self) -> None:
        in_flight = Counter[str]()
        for push in self.pushes:
            in_flight[push.worker_id] += len(push.tasks)
        for worker_id, worker in self.workers.items():
            assert 0 <= worker.held <= worker.capacity
            assert worker.held + in_flight[worker_id] <= worker.capacity
            credit = self.credits[worker_id]
            # The coordinator counts as in flight exactly the pushes its latest advert does
            # not account for: those still travelling plus those accepted since.
            assert credit.in_flight == in_flight[worker_id] + (
                worker.accepted_total - credit.accepted_total
            )
            assert credit.available <= worker.capacity - worker.held - in_flight[worker_id]

    @invariant()
    def no_task_lost_or_duplicated(self) -> None:
        pushed = [t for push in self.pushes for t in push.tasks]
        assert len(pushed) == len(set(pushed))
        assert self.backlog >= 0


TestDispatchMachine = DispatchMachine.TestCase
TestDispatchMachine.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None, database=None
)


def test_credit_is_frozen() -> None:
    credit = idle("a", 1)
    with pytest.raises(AttributeError):
        credit.sent_total = 5  # type: ignore[misc]
    assert replace(credit, sent_total=5).sent_total == 5
