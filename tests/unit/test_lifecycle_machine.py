"""tm.core.lifecycle: the task state machine, driven by hypothesis and by hand.

`LifecycleMachine` plays a coordinator's view of many tasks and a few workers under a model
clock that jumps forwards and backwards. It schedules tasks, claims them, delivers reports
with the current attempt and with stale ones, loses pushes, returns tasks, crashes workers
and cancels, and after every step checks the rules in the lifecycle module's docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tm.core.lifecycle import (
    WORKER_LOST,
    Outcome,
    TaskState,
    cancel,
    cancelled,
    claim,
    completed,
    failed,
    push_failed,
    returned,
    started,
    worker_lost,
)
from tm.core.tasks import HELD, TERMINAL, Status

WORKERS = ("w1", "w2", "w3")


def new(**kw: Any) -> TaskState:
    return TaskState(status=Status.SCHEDULED, scheduled_at=100.0, **kw)


def held_by(state: TaskState, worker_id: str = "w1", now: float = 100.0) -> TaskState:
    outcome = claim(state, worker_id, now)
    assert outcome.changed
    return outcome.state


def running(state: TaskState, worker_id: str = "w1") -> TaskState:
    picked = held_by(state, worker_id)
    outcome = started(picked, picked.attempt)
    assert outcome.changed
    return outcome.state


def assert_stale(outcome: Outcome, before: TaskState) -> None:
    assert outcome.stale
    assert not outcome.changed
    assert outcome.state == before


# --- examples, one transition at a time -------------------------------------------------


def test_claim_only_when_due() -> None:
    task = new()
    assert_stale(claim(task, "w1", 99.999), task)
    outcome = claim(task, "w1", 100.0)  # due exactly at scheduled_at
    assert outcome.changed
    assert outcome.state == TaskState(Status.PICKED, 100.0, attempt=1, worker_id="w1")
    # Already held: a second worker cannot take it.
    assert_stale(claim(outcome.state, "w2", 500.0), outcome.state)


def test_started_then_completed() -> None:
    picked = held_by(new())
    run = started(picked, 1)
    assert run.changed
    assert run.state.status is Status.RUNNING
    assert run.state.started is True
    assert run.state.worker_id == "w1"
    assert_stale(started(run.state, 1), run.state)  # a duplicate report
    done = completed(run.state, 1)
    assert done.changed
    assert done.state.status is Status.COMPLETED
    assert done.state.worker_id is None
    assert_stale(completed(done.state, 1), done.state)


def test_completed_without_a_started_report() -> None:
    done = completed(held_by(new()), 1)
    assert done.state.status is Status.COMPLETED
    assert done.state.started is False


@pytest.mark.parametrize("attempt", [0, 2, -1])
def test_reports_for_another_attempt_are_stale(attempt: int) -> None:
    picked = held_by(new())
    assert_stale(started(picked, attempt), picked)
    assert_stale(completed(picked, attempt), picked)
    assert_stale(failed(picked, attempt, "boom", 200.0), picked)
    assert_stale(push_failed(picked, attempt), picked)
    assert_stale(returned(picked, attempt), picked)


def test_failed_with_three_attempts_retries_at_retry_at() -> None:
    task = running(new(max_attempts=3))
    for n in (1, 2):
        outcome = failed(task, task.attempt, f"exit {n}", retry_at=100.0 + 10 * n)
        assert outcome.changed
        task = outcome.state
        assert task.status is Status.SCHEDULED
        assert task.scheduled_at == 100.0 + 10 * n
        assert task.failures == n
        assert task.error == f"exit {n}"
        assert task.worker_id is None
        assert task.attempt == n
        # Not before retry_at.
        assert_stale(claim(task, "w2", task.scheduled_at - 0.5), task)
        task = claim(task, "w2", task.scheduled_at).state
        assert task.attempt == n + 1
        task = started(task, task.attempt).state
    last = failed(task, 3, "exit 3", retry_at=999.0)
    assert last.state.status is Status.FAILED
    assert last.state.failures == 3
    assert last.state.error == "exit 3"
    assert last.state.scheduled_at == 120.0  # no retry was scheduled
    assert last.state.worker_id is None


def test_failed_once_with_one_attempt_is_final() -> None:
    outcome = failed(held_by(new()), 1, None, retry_at=150.0)
    assert outcome.state.status is Status.FAILED
    assert outcome.state.failures == 1


def test_at_most_once_failure_is_final_whatever_the_budget() -> None:
    task = running(new(max_attempts=5, at_most_once=True))
    outcome = failed(task, 1, "exit 1", retry_at=150.0)
    assert outcome.state.status is Status.FAILED
    assert outcome.state.failures == 1


@pytest.mark.parametrize("start", [False, True])
def test_worker_lost_fails_an_at_most_once_task(start: bool) -> None:
    task = new(max_attempts=3, at_most_once=True)
    task = running(task) if start else held_by(task)
    outcome = worker_lost(task, "w1")
    assert outcome.changed
    assert outcome.state.status is Status.FAILED
    assert outcome.state.error == WORKER_LOST == "worker lost"
    assert outcome.state.worker_id is None
    assert outcome.state.losses == 1
    assert outcome.state.failures == 0


def test_worker_lost_requeues_until_the_losses_cap() -> None:
    task = new(max_attempts=2, max_losses=3)
    for n in (1, 2):
        task = running(task, "w1")
        outcome = worker_lost(task, "w1")
        task = outcome.state
        assert task.status is Status.SCHEDULED
        assert task.losses == n
        assert task.failures == 0  # a lost worker does not spend the retry budget
        assert task.worker_id is None
        assert task.error is None
    task = running(task, "w2")
    final = worker_lost(task, "w2").state
    assert final.status is Status.FAILED
    assert final.error == WORKER_LOST
    assert final.losses == 3
    assert final.attempt == 3


def test_worker_lost_for_another_worker_or_an_idle_task_is_stale() -> None:
    task = running(new(), "w1")
    assert_stale(worker_lost(task, "w2"), task)
    scheduled = new()
    assert_stale(worker_lost(scheduled, "w1"), scheduled)


def test_push_failed_makes_it_claimable_again_keeping_the_attempt() -> None:
    picked = held_by(new(at_most_once=True))
    outcome = push_failed(picked, 1)
    assert outcome.changed
    assert outcome.state.status is Status.SCHEDULED
    assert outcome.state.worker_id is None
    assert outcome.state.attempt == 1
    assert outcome.state.losses == 0 and outcome.state.failures == 0
    again = claim(outcome.state, "w2", 100.0).state
    assert again.attempt == 2
    assert again.worker_id == "w2"
    # A report from the first push is now fenced off.
    assert_stale(started(again, 1), again)


def test_push_failed_and_returned_refuse_a_running_task() -> None:
    task = running(new())
    assert_stale(push_failed(task, 1), task)
    assert_stale(returned(task, 1), task)


def test_returned_requeues_a_picked_task() -> None:
    outcome = returned(held_by(new(at_most_once=True)), 1)
    assert outcome.state.status is Status.SCHEDULED
    assert outcome.state.worker_id is None
    assert outcome.state.started is False


@pytest.mark.parametrize("how", ["scheduled", "picked", "running"])
def test_cancel_any_live_task(how: str) -> None:
    task = new()
    if how == "picked":
        task = held_by(task)
    elif how == "running":
        task = running(task)
    outcome = cancel(task)
    assert outcome.changed
    assert outcome.state.status is Status.CANCELLED
    assert outcome.state.worker_id is None
    # A late report from the worker changes nothing.
    assert_stale(completed(outcome.state, task.attempt), outcome.state)
    assert_stale(failed(outcome.state, task.attempt, "x", 0.0), outcome.state)


def test_terminal_tasks_refuse_everything() -> None:
    done = completed(running(new()), 1).state
    assert_stale(cancel(done), done)
    assert_stale(claim(done, "w1", 10_000.0), done)
    assert_stale(worker_lost(done, "w1"), done)


# --- the state machine ------------------------------------------------------------------


@dataclass
class Tracked:
    """The model's record of one task, kept beside the core's TaskState."""

    state: TaskState
    holder: str | None = None
    claims: int = 0
    starts: int = 0
    terminal: list[TaskState] = field(default_factory=list)
    claimed_after_start: bool = False


# Mostly the current attempt; otherwise a late report of an earlier one, or a bogus later one.
ATTEMPT_SHIFTS = st.sampled_from([0, 0, 0, 0, -1, 1, -2])

# Three times in four (hypothesis would otherwise favour the first choice of an integer draw).
MOSTLY = st.sampled_from([True, True, True, False])

# Weighted: a claimed task is started more often than it is anything else.
REPORT_KINDS = st.sampled_from(
    ["started", "started", "started", "completed", "completed", "failed", "failed",
     "cancelled", "push_failed", "returned"]
)

# Every report a worker can make: the statuses it fits, and the call (attempt as argument).
REPORTS: dict[str, tuple[frozenset[Status], Callable[[TaskState, int], Outcome]]] = {
    "started": (frozenset({Status.PICKED}), started),
    "completed": (HELD, completed),
    "failed": (HELD, lambda state, attempt: failed(state, attempt, "exit 1", 0.0)),
    "cancelled": (HELD, cancelled),
    "push_failed": (frozenset({Status.PICKED}), push_failed),
    "returned": (frozenset({Status.PICKED}), returned),
}

# (offset of scheduled_at from now, max_attempts, max_losses, at_most_once)
NEW_TASKS = st.tuples(
    st.one_of(st.floats(min_value=-20, max_value=0), st.floats(min_value=0, max_value=30)),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=3),
    st.booleans(),
)


def check_fitting_transitions(state: TaskState, now: float) -> None:
    """What each transition that fits `state` must produce (Rules 1 and 5, the budgets)."""
    outcomes: list[Outcome] = []
    if state.status is Status.SCHEDULED and now >= state.scheduled_at:
        picked = claim(state, "w2", now)
        assert picked.state == replace(
            state, status=Status.PICKED, attempt=state.attempt + 1, worker_id="w2"
        )
        outcomes.append(picked)
    if state.status is Status.PICKED:
        run = started(state, state.attempt)
        assert run.state == replace(state, status=Status.RUNNING, started=True)
        outcomes.append(run)
        for back in (push_failed(state, state.attempt), returned(state, state.attempt)):
            # Nothing ran, so nothing is spent; the attempt (fencing token) is kept.
            assert back.state == replace(state, status=Status.SCHEDULED, worker_id=None)
            outcomes.append(back)
    if state.status in HELD:
        done = completed(state, state.attempt)
        # A completion clears an earlier attempt's error (as the report statement does).
        assert done.state == replace(state, status=Status.COMPLETED, worker_id=None, error=None)
        stopped = cancelled(state, state.attempt)
        assert stopped.state == replace(state, status=Status.CANCELLED, worker_id=None)
        fail = failed(state, state.attempt, "exit 2", now + 7)
        retry = state.failures + 1 < state.max_attempts and not state.at_most_once
        if retry:
            assert fail.state == replace(
                state, status=Status.SCHEDULED, worker_id=None, failures=state.failures + 1,
                scheduled_at=now + 7, error="exit 2",
            )
        else:
            assert fail.state == replace(
                state, status=Status.FAILED, worker_id=None, failures=state.failures + 1,
                error="exit 2",
            )
        assert state.worker_id is not None
        lost = worker_lost(state, state.worker_id)
        if state.at_most_once or state.losses + 1 >= state.max_losses:
            assert lost.state == replace(
                state, status=Status.FAILED, worker_id=None, losses=state.losses + 1,
                error=WORKER_LOST,
            )
        else:
            assert lost.state == replace(
                state, status=Status.SCHEDULED, worker_id=None, losses=state.losses + 1
            )
        outcomes += [done, stopped, fail, lost]
    if not state.status.terminal:
        gone = cancel(state)
        assert gone.state == replace(state, status=Status.CANCELLED, worker_id=None)
        outcomes.append(gone)
    for outcome in outcomes:
        assert outcome.changed
        after = outcome.state
        assert (after.status in HELD) == (after.worker_id is not None)
        assert after.attempt >= state.attempt
        assert after.failures <= after.max_attempts
        assert after.losses <= after.max_losses
        if after.at_most_once and after.started:
            assert after.status is not Status.SCHEDULED  # Rule 5: never dispatched again


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1_000.0
        self.tasks: list[Tracked] = []

    # -- helpers

    def pick(self, data: st.DataObject,
             prefer: Callable[[TaskState], bool] = lambda state: True) -> Tracked:
        """Any task, but usually one the step can act on, so that runs get somewhere."""
        fitting = [t for t in self.tasks if prefer(t.state)]
        pool = fitting if fitting and data.draw(MOSTLY, label="prefer") else self.tasks
        return pool[data.draw(st.integers(0, len(pool) - 1), label="task")]

    def apply(self, task: Tracked, outcome: Outcome, *, fits: bool) -> None:
        """Record an outcome. `fits`: the model's own view of whether it may apply."""
        before = task.state
        if before.status in TERMINAL:
            fits = False  # Rule 4
        if not fits:
            # Rule 3: a report that does not fit changes nothing at all.
            assert outcome.stale, (before, outcome)
            assert outcome.state == before
            return
        assert outcome.changed, (before, outcome)
        after = outcome.state
        assert after.attempt >= before.attempt
        if after.status in TERMINAL:
            task.terminal.append(after)
        if after.status in HELD:
            task.holder = after.worker_id if before.status not in HELD else task.holder
        else:
            task.holder = None
        task.state = after

    def report(self, data: st.DataObject, fits_status: frozenset[Status],
               call: Callable[[TaskState, int], Outcome]) -> tuple[Tracked, bool]:
        # Usually a held task: reports about held tasks are the ones that can go wrong.
        task = self.pick(data, lambda state: state.status in HELD)
        attempt = task.state.attempt + data.draw(ATTEMPT_SHIFTS, label="attempt shift")
        fits = task.state.status in fits_status and attempt == task.state.attempt
        self.apply(task, call(task.state, attempt), fits=fits)
        return task, fits

    # -- rules

    @initialize(specs=st.lists(NEW_TASKS, min_size=1, max_size=4))
    def first_tasks(self, specs: list[tuple[float, int, int, bool]]) -> None:
        for spec in specs:
            self.schedule(*spec)

    @rule(spec=NEW_TASKS)
    @precondition(lambda self: len(self.tasks) < 6)
    def schedule_one(self, spec: tuple[float, int, int, bool]) -> None:
        self.schedule(*spec)

    def schedule(self, offset: float, max_attempts: int, max_losses: int,
                 at_most_once: bool) -> None:
        self.tasks.append(Tracked(TaskState(
            Status.SCHEDULED, scheduled_at=self.now + offset, max_attempts=max_attempts,
            max_losses=max_losses, at_most_once=at_most_once,
        )))

    @rule(delta=st.one_of(
        st.floats(min_value=-5, max_value=20),
        st.sampled_from([-600.0, -60.0, 60.0, 600.0]),  # clock jumps
    ))
    def advance_clock(self, delta: float) -> None:
        self.now += delta

    @rule(data=st.data(), worker=st.sampled_from(WORKERS))
    @precondition(lambda self: self.tasks)
    def claim(self, data: st.DataObject, worker: str) -> None:
        # Usually a due task; the others (and the clock going back) probe Rule 2.
        task = self.pick(
            data, lambda state: state.status is Status.SCHEDULED and state.scheduled_at <= self.now
        )
        before = task.state
        outcome = claim(before, worker, self.now)
        if outcome.changed:
            # Rule 2: never early, whatever the clock did.
            assert self.now >= before.scheduled_at
            assert outcome.state.worker_id == worker
            assert outcome.state.attempt == before.attempt + 1
            task.claims += 1
            if task.starts:
                task.claimed_after_start = True
        fits = before.status is Status.SCHEDULED and self.now >= before.scheduled_at
        self.apply(task, outcome, fits=fits)

    @rule(data=st.data(), kind=REPORT_KINDS,
          backoff=st.floats(min_value=0, max_value=30, allow_nan=False))
    @precondition(lambda self: self.tasks)
    def worker_reports(self, data: st.DataObject, kind: str, backoff: float) -> None:
        """A report from a worker, for the task's current attempt or a stale one."""
        retry_at = self.now + backoff
        picked_only = frozenset({Status.PICKED})
        if kind == "started":
            task, fits = self.report(data, picked_only, started)
            if fits:
                task.starts += 1
                assert task.state.status is Status.RUNNING
                assert task.state.started
        elif kind == "completed":
            task, fits = self.report(data, HELD, completed)
            if fits:
                assert task.state.status is Status.COMPLETED
        elif kind == "cancelled":
            task, fits = self.report(data, HELD, cancelled)
            if fits:
                assert task.state.status is Status.CANCELLED
        elif kind == "failed":
            task, fits = self.report(
                data, HELD, lambda state, attempt: failed(state, attempt, "exit 1", retry_at)
            )
            if fits:
                state = task.state
                assert state.error == "exit 1"
                if state.status is Status.SCHEDULED:
                    assert not state.at_most_once
                    assert state.failures < state.max_attempts
                    assert state.scheduled_at == retry_at
                else:
                    assert state.status is Status.FAILED
                    assert state.at_most_once or state.failures == state.max_attempts
        else:
            # push_failed (the push never arrived) or returned (handed back unstarted).
            task, fits = self.report(data, picked_only, REPORTS[kind][1])
            if fits:
                assert task.state.status is Status.SCHEDULED
                assert task.state.attempt == task.claims  # the fencing token is kept

    @rule(worker=st.sampled_from(WORKERS))
    def worker_crashes(self, worker: str) -> None:
        """The worker is gone: every task it holds is lost, no other task is touched."""
        for task in self.tasks:
            before = task.state
            fits = before.status in HELD and before.worker_id == worker
            self.apply(task, worker_lost(before, worker), fits=fits)
            if fits:
                after = task.state
                assert after.losses == before.losses + 1
                assert after.failures == before.failures
                if after.status is Status.FAILED:
                    assert after.error == WORKER_LOST
                    assert before.at_most_once or after.losses == after.max_losses
                else:
                    assert after.status is Status.SCHEDULED
                    assert not before.at_most_once

    @rule(data=st.data())
    @precondition(lambda self: self.tasks)
    def cancel(self, data: st.DataObject) -> None:
        # Mostly a finished task (which must refuse), so live ones last long enough to matter.
        finished = [t for t in self.tasks if t.state.status.terminal]
        if not data.draw(MOSTLY, label="a finished task"):
            task = self.pick(data)
        elif finished:
            task = finished[data.draw(st.integers(0, len(finished) - 1), label="task")]
        else:
            return
        fits = not task.state.status.terminal
        self.apply(task, cancel(task.state), fits=fits)
        if fits:
            assert task.state.status is Status.CANCELLED

    # -- invariants

    @invariant()
    def one_holder(self) -> None:
        """Rule 1: held iff a worker is named, and it is the worker that claimed it."""
        for task in self.tasks:
            state = task.state
            assert (state.status in HELD) == (state.worker_id is not None), state
            assert state.worker_id == task.holder

    @invariant()
    def misfit_reports_change_nothing(self) -> None:
        """Rule 3 (and 2, 4) exhaustively: every report that does not fit is refused, as is.

        Probed on every task after every step without applying anything, so that rare
        combinations (a `returned` for a running task, say) are checked every time.
        """
        for task in self.tasks:
            state = task.state
            for kind, (fits_status, call) in REPORTS.items():
                for attempt in (state.attempt - 1, state.attempt, state.attempt + 1):
                    if attempt == state.attempt and state.status in fits_status:
                        continue
                    outcome = call(state, attempt)
                    assert outcome.stale, (kind, attempt, state, outcome)
                    assert outcome.state == state, (kind, attempt, state, outcome)
            if state.status is not Status.SCHEDULED or self.now < state.scheduled_at:
                assert claim(state, "w1", self.now).stale
            for worker in WORKERS:
                if worker != state.worker_id:
                    assert worker_lost(state, worker).stale
            if state.status in TERMINAL:
                assert cancel(state).stale

    @invariant()
    def fitting_reports_do_what_they_say(self) -> None:
        """Every transition that fits a task right now, tried on it without applying it."""
        for task in self.tasks:
            check_fitting_transitions(task.state, self.now)

    @invariant()
    def terminal_is_final(self) -> None:
        """Rule 4: at most one terminal transition, and the terminal state stays as it was."""
        for task in self.tasks:
            assert len(task.terminal) <= 1
            if task.terminal:
                assert task.state == task.terminal[0]
            else:
                assert task.state.status not in TERMINAL

    @invariant()
    def at_most_once_runs_at_most_once(self) -> None:
        """Rule 5: never started twice, and never dispatched again once started."""
        for task in self.tasks:
            if task.state.at_most_once:
                assert task.starts <= 1
                assert not task.claimed_after_start
                if task.starts:
                    assert task.state.status in {Status.RUNNING, *TERMINAL}

    @invariant()
    def budgets_and_counters(self) -> None:
        for task in self.tasks:
            state = task.state
            assert 0 <= state.failures <= state.max_attempts
            assert 0 <= state.losses <= state.max_losses
            assert state.attempt == task.claims  # one per dispatch, never decreasing
            assert state.started == (task.starts > 0)
            if state.status is Status.FAILED:
                assert (state.failures == state.max_attempts
                        or state.losses == state.max_losses
                        or (state.at_most_once and state.failures + state.losses == 1))


TestLifecycleMachine = LifecycleMachine.TestCase
TestLifecycleMachine.settings = settings(
    max_examples=120, stateful_step_count=50, deadline=None, database=None
)
