"""The task state machine: every transition a task can make, in one place.

The coordinator's SQL (tm/db/queries.py) applies exactly these transitions in bulk; this
module is the reference they are tested against, and what the property tests drive.

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

from tm.core.tasks import HELD, Status

WORKER_LOST = "worker lost"
TIMEOUT = "timeout"


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


def claim(state: TaskState, worker_id: str, now: float) -> Outcome:
    """Dispatch to `worker_id`: only a scheduled task that is due."""
    if state.status is not Status.SCHEDULED or now < state.scheduled_at:
        return _stale(state)
    return Outcome(
        replace(state, status=Status.PICKED, attempt=state.attempt + 1, worker_id=worker_id)
    )


def push_failed(state: TaskState, attempt: int) -> Outcome:
    """The push of this attempt definitely never reached a worker: make it claimable again.

    The attempt number is kept (it is the fencing token and must only grow), and the
    at-most-once budget is not spent, since nothing ran.
    """
    if state.status is not Status.PICKED or state.attempt != attempt:
        return _stale(state)
    return Outcome(replace(state, status=Status.SCHEDULED, worker_id=None))


def started(state: TaskState, attempt: int) -> Outcome:
    if state.status is not Status.PICKED or state.attempt != attempt:
        return _stale(state)
    return Outcome(replace(state, status=Status.RUNNING, started=True))


def completed(state: TaskState, attempt: int) -> Outcome:
    if state.status not in HELD or state.attempt != attempt:
        return _stale(state)
    return Outcome(replace(state, status=Status.COMPLETED, worker_id=None))


def failed(state: TaskState, attempt: int, error: str | None, retry_at: float) -> Outcome:
    """An execution failure: retried at `retry_at` while the retry budget lasts."""
    if state.status not in HELD or state.attempt != attempt:
        return _stale(state)
    failures = state.failures + 1
    if failures < state.max_attempts and not state.at_most_once:
        return Outcome(
            replace(
                state,
                status=Status.SCHEDULED,
                worker_id=None,
                failures=failures,
                scheduled_at=retry_at,
                error=error,
            )
        )
    return Outcome(
        replace(state, status=Status.FAILED, worker_id=None, failures=failures, error=error)
    )


def returned(state: TaskState, attempt: int) -> Outcome:
    """The worker hands back a task it never started (drain): dispatch it again."""
    if state.status is not Status.PICKED or state.attempt != attempt:
        return _stale(state)
    return Outcome(replace(state, status=Status.SCHEDULED, worker_id=None))


def worker_lost(state: TaskState, worker_id: str) -> Outcome:
    """`worker_id` is gone (heartbeat deadline, lease expiry) before reporting a result."""
    if state.status not in HELD or state.worker_id != worker_id:
        return _stale(state)
    losses = state.losses + 1
    if state.at_most_once or losses >= state.max_losses:
        return Outcome(
            replace(state, status=Status.FAILED, worker_id=None, losses=losses, error=WORKER_LOST)
        )
    return Outcome(replace(state, status=Status.SCHEDULED, worker_id=None, losses=losses))


def cancel(state: TaskState) -> Outcome:
    """A client cancel. Terminal tasks refuse (the API answers 409)."""
    if state.status.terminal:
        return _stale(state)
    return Outcome(replace(state, status=Status.CANCELLED, worker_id=None))
