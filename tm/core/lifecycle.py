"""The task state machine: every transition a task can make, as data, in one place.

`TRANSITIONS` says, for each event, which statuses it applies to and where it takes the
task. The functions below apply it to one `TaskState` (what the property tests drive);
tm/db/transitions.py renders the same table into the SQL that applies it in bulk — the
status `CASE` arms of the report and recovery statements and the status guards of claim,
hand-back and cancel — so there is no second copy of it to drift.
tests/integration/test_lifecycle_sql.py drives identical random event sequences through
both and compares the rows with the states.

Invariants this module keeps (checked by tests/unit/test_lifecycle_machine.py):

* Rule 1 — one holder: a task is held (picked or running) by exactly one worker, named in
  `worker_id`, for exactly one `attempt`; otherwise `worker_id` is None.
* Rule 2 — never early: a claim is refused while `now < scheduled_at`.
* Rule 3 — fencing: a report whose attempt is not the task's current attempt, or that does
  not fit the task's status, changes nothing (`Outcome.stale`).
* Rule 4 — terminal is final: completed, failed and cancelled tasks never change again.
* Rule 5 — at most once: a task submitted with `at_most_once` never reaches a second
  worker once one may have run it: losing its worker fails it with error "worker lost",
  and an execution failure is final. Only a push known not to have arrived is retried.

`attempt` counts dispatches and is the fencing token. Execution failures are counted
separately (`failures`, bounded by `max_attempts`) and so are worker losses (`losses`,
bounded by `max_losses`), so a lost worker never eats a task's retry budget.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from tm.core.reports import ReportKind
from tm.core.tasks import HELD, TERMINAL, Status

WORKER_LOST = "worker lost"
TIMEOUT = "timeout"


class Action(StrEnum):
    """The events that are not a worker's report (those are tm.core.reports.ReportKind)."""

    CLAIM = "claim"  # the coordinator dispatches a due task to a worker
    PUSH_FAILED = "push_failed"  # the push certainly never reached the worker
    WORKER_LOST = "worker_lost"  # the holder is gone (connection, heartbeat or lease)
    CANCEL = "cancel"  # a client cancels


Event = ReportKind | Action


@dataclass(frozen=True, slots=True)
class Budget:
    """A counter a transition spends, and its limit.

    While `counter + 1 < limit`, and the task is not at-most-once (Rule 5), the transition
    goes where it says; otherwise the task fails, with `error` if one is given (else the
    report's own). Either way the counter grows by one. `counter` and `limit` name fields of
    `TaskState` and the columns of `tasks` alike.
    """

    counter: str
    limit: str
    error: str | None = None


RETRIES = Budget("failures", "max_attempts")
LOSSES = Budget("losses", "max_losses", error=WORKER_LOST)


@dataclass(frozen=True, slots=True)
class Transition:
    """An event applies to a task whose status is in `accepts` and takes it to `to`
    (or to failed, once `budget` is spent). In any other status it is stale."""

    accepts: frozenset[Status]
    to: Status
    budget: Budget | None = None

    @property
    def outcomes(self) -> frozenset[Status]:
        return frozenset({self.to, Status.FAILED} if self.budget else {self.to})


PICKED = frozenset({Status.PICKED})
LIVE = frozenset(Status) - TERMINAL

# The whole state machine. Fences beside the statuses: a claim needs the task due
# (Rule 2), reports need the current attempt (Rule 3), a loss needs the holder itself.
TRANSITIONS: dict[Event, Transition] = {
    Action.CLAIM: Transition(frozenset({Status.SCHEDULED}), Status.PICKED),
    Action.PUSH_FAILED: Transition(PICKED, Status.SCHEDULED),
    ReportKind.STARTED: Transition(PICKED, Status.RUNNING),
    ReportKind.COMPLETED: Transition(HELD, Status.COMPLETED),
    ReportKind.FAILED: Transition(HELD, Status.SCHEDULED, RETRIES),
    ReportKind.CANCELLED: Transition(HELD, Status.CANCELLED),
    ReportKind.RETURNED: Transition(PICKED, Status.SCHEDULED),
    Action.WORKER_LOST: Transition(HELD, Status.SCHEDULED, LOSSES),
    Action.CANCEL: Transition(LIVE, Status.CANCELLED),
}


@dataclass(frozen=True, slots=True)
class TaskState:
    status: Status
    scheduled_at: float
    attempt: int = 0
    worker_id: str | None = None
    failures: int = 0
    losses: int = 0
    max_attempts: int = 1
    max_losses: int = 3
    at_most_once: bool = False
    error: str | None = None
    started: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    state: TaskState
    stale: bool = False

    @property
    def changed(self) -> bool:
        return not self.stale


def _stale(state: TaskState) -> Outcome:
    return Outcome(state, stale=True)


def budget_left(state: TaskState, budget: Budget) -> bool:
    """Whether a transition spending `budget` still goes where it says (see Budget)."""
    spent: int = getattr(state, budget.counter)
    limit: int = getattr(state, budget.limit)
    return spent + 1 < limit and not state.at_most_once


def _move(state: TaskState, event: Event, **changes: Any) -> Outcome:
    """Apply TRANSITIONS[event] (the caller has checked the event's fence)."""
    transition = TRANSITIONS[event]
    if state.status not in transition.accepts:
        return _stale(state)
    status = transition.to
    budget = transition.budget
    if budget is not None:
        if not budget_left(state, budget):
            status = Status.FAILED
            if budget.error is not None:
                changes["error"] = budget.error
        changes[budget.counter] = getattr(state, budget.counter) + 1
    if status not in HELD:
        changes["worker_id"] = None
    return Outcome(replace(state, status=status, **changes))


def claim(state: TaskState, worker_id: str, now: float) -> Outcome:
    """Dispatch to `worker_id`: only a scheduled task that is due."""
    if now < state.scheduled_at:
        return _stale(state)
    return _move(state, Action.CLAIM, attempt=state.attempt + 1, worker_id=worker_id)


def push_failed(state: TaskState, attempt: int) -> Outcome:
    """The push of this attempt definitely never reached a worker: make it claimable again.

    The attempt number is kept (it is the fencing token and must only grow), and the
    at-most-once budget is not spent, since nothing ran.
    """
    if state.attempt != attempt:
        return _stale(state)
    return _move(state, Action.PUSH_FAILED)


def reported(
    state: TaskState,
    kind: ReportKind,
    attempt: int,
    *,
    error: str | None = None,
    retry_at: float = 0.0,
) -> Outcome:
    """A worker's report of `kind` about `attempt`; a failure to retry is due at `retry_at`.

    A completion clears an earlier attempt's error, a failure records its own; a cancel or
    a hand-back leaves the error as it was.
    """
    if state.attempt != attempt:
        return _stale(state)
    if kind is ReportKind.STARTED:
        return _move(state, kind, started=True)
    if kind is ReportKind.COMPLETED:
        return _move(state, kind, error=None)
    if kind is ReportKind.FAILED:
        outcome = _move(state, kind, error=error)
        if outcome.changed and outcome.state.status is Status.SCHEDULED:
            return Outcome(replace(outcome.state, scheduled_at=retry_at))
        return outcome
    return _move(state, kind)


def started(state: TaskState, attempt: int) -> Outcome:
    return reported(state, ReportKind.STARTED, attempt)


def completed(state: TaskState, attempt: int) -> Outcome:
    return reported(state, ReportKind.COMPLETED, attempt)


def failed(state: TaskState, attempt: int, error: str | None, retry_at: float) -> Outcome:
    """An execution failure: retried at `retry_at` while the retry budget lasts."""
    return reported(state, ReportKind.FAILED, attempt, error=error, retry_at=retry_at)


def cancelled(state: TaskState, attempt: int) -> Outcome:
    """The worker stopped the attempt on a cancel request."""
    return reported(state, ReportKind.CANCELLED, attempt)


def returned(state: TaskState, attempt: int) -> Outcome:
    """The worker hands back a task it never started (drain): dispatch it again."""
    return reported(state, ReportKind.RETURNED, attempt)


def worker_lost(state: TaskState, worker_id: str) -> Outcome:
    """`worker_id` is gone (heartbeat deadline, lease expiry) before reporting a result."""
    if state.worker_id != worker_id:
        return _stale(state)
    return _move(state, Action.WORKER_LOST)


def cancel(state: TaskState) -> Outcome:
    """A client cancel. Terminal tasks refuse (the API answers 409)."""
    return _move(state, Action.CANCEL)
