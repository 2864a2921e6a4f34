"""The lifecycle equivalence: identical random event sequences driven through
tm.core.lifecycle and through the statements that apply it on PostgreSQL — claim and
hand-back (tm.db.dispatch), report batches (tm.db.reports), recovery of lost workers and
expired leases (tm.db.recovery), cancel (tm.db.tasks) — leave every task in the same state,
step by step: status, attempt, failure and loss counts, holder, error, when it is due, and
which events were refused as stale.

The model clock `NOW` stands for the database's clock at every step. Tasks are due a minute
ago or tomorrow, and a failure is retried either at once (no backoff) or minutes later, so
whether a task is due never depends on how long a step took; when it is due is compared
within `SLACK`. Report batches go through `collapse` on the core side, as the report
statement receives them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.integration.helpers import db_now, new_task, open_db
from tm.aio.pg import Database
from tm.core import lifecycle
from tm.core.backoff import exponential
from tm.core.lifecycle import TRANSITIONS, Outcome, TaskState
from tm.core.reports import Report, ReportKind, collapse
from tm.core.tasks import HELD, Status
from tm.db import dispatch, recovery, reports
from tm.db import tasks as db_tasks

NOW = 1_000_000.0
DUE, LATER = -60.0, 4_500.0  # offsets of scheduled_at from now: due, due after a wait
SLACK = 5.0  # seconds: how far the database's clock may move during one example
WORKERS = ("w1", "w2")
# (base, cap) of the retry backoff: at once, or minutes later (never due within a test).
RETRIES = {"at once": (0.0, 0.0), "later": (600.0, 4000.0)}
SHIFTS = st.sampled_from([0, 0, 0, -1, 1])  # attempt shift: mostly the current attempt
ERRORS = {ReportKind.FAILED: "exit 1", ReportKind.CANCELLED: "cancelled"}

# (due offset, max_attempts, max_losses, at_most_once): mostly tasks with retries to spend.
TASKS = st.lists(
    st.tuples(st.sampled_from([DUE, DUE, LATER]), st.sampled_from([3, 2, 1]),
              st.sampled_from([3, 2, 1]), st.sampled_from([False, False, True])),
    min_size=1, max_size=4,
)
# Weighted, so that runs get somewhere: claims and reports most, the rest now and then.
STEPS = st.sampled_from(["claim"] * 3 + ["reports"] * 5 + ["undo", "lost", "reap", "cancel",
                                                           "wait"])
WEIGHTED_KINDS = ([ReportKind.FAILED] * 3 + [ReportKind.STARTED] * 2
                  + [ReportKind.COMPLETED] * 2 + [ReportKind.CANCELLED, ReportKind.RETURNED])
KINDS = st.sampled_from(WEIGHTED_KINDS)
MOSTLY = st.sampled_from([True, True, True, False])
WAIT = 5_000.0  # longer than any retry delay: whatever was retried is due after a wait


@dataclass
class Pair:
    """One task on both sides: its row's id and the core's state."""

    task_id: uuid.UUID
    state: TaskState
    lease_expired: bool = False  # claimed with a lease already past (for "reap")


class Both:
    """Applies each event to the core states and to the database, and compares."""

    def __init__(self, db: Database, pairs: list[Pair], retry: tuple[float, float]) -> None:
        self.db = db
        self.pairs = pairs
        self.by_id = {p.task_id: p for p in pairs}
        self.base, self.cap = retry

    def pick(self, data: st.DataObject) -> Pair:
        """Any task, but usually a held one: the events about those are the ones that can
        go wrong."""
        held = [p for p in self.pairs if p.state.status in HELD]
        pool = held if held and data.draw(MOSTLY, label="prefer held") else self.pairs
        return pool[data.draw(st.integers(0, len(pool) - 1), label="task")]

    def apply(self, pair: Pair, outcome: Outcome) -> bool:
        pair.state = outcome.state
        return outcome.changed

    def useful(self) -> list[str]:
        """The events that can change something now (weighted like STEPS)."""
        states = [p.state for p in self.pairs]
        steps = []
        if any(s.status is Status.SCHEDULED and s.scheduled_at <= NOW for s in states):
            steps += ["claim"] * 3
        if any(s.status in HELD for s in states):
            steps += ["reports"] * 5 + ["undo", "lost", "reap"]
        if any(s.status is Status.SCHEDULED and s.scheduled_at > NOW for s in states):
            steps.append("wait")
        if any(not s.status.terminal for s in states):
            steps.append("cancel")
        return steps

    async def step(self, data: st.DataObject) -> str:
        """Draw one event (usually one that can change something), apply it to both
        sides; says what it was."""
        useful = self.useful()
        name = data.draw(
            st.sampled_from(useful) if useful and data.draw(MOSTLY, label="useful") else STEPS,
            label="step",
        )
        if name == "claim":
            worker = data.draw(st.sampled_from(WORKERS), label="worker")
            expired = data.draw(st.booleans(), label="lease already expired")
            await self.claim(worker, expired)
            return f"claim {worker} expired={expired}"
        if name == "reports":
            items = []
            for _ in range(data.draw(st.integers(1, 3), label="batch size")):
                pair = self.pick(data)
                fitting = [k for k in WEIGHTED_KINDS
                           if pair.state.status in TRANSITIONS[k].accepts]
                fit = fitting and data.draw(MOSTLY, label="a kind that fits")
                kinds = st.sampled_from(fitting) if fit else KINDS
                items.append((pair, data.draw(kinds, label="kind"),
                              data.draw(SHIFTS, label="attempt shift"),
                              data.draw(st.floats(0, 1), label="jitter")))
            await self.reports(items)
            return "reports " + ", ".join(f"{k.name}@{p.state.attempt}{s:+d}"
                                          for p, k, s, _ in items)
        if name == "undo":
            pair, shift = self.pick(data), data.draw(SHIFTS, label="attempt shift")
            await self.undo(pair, shift)
            return f"undo {pair.task_id} {shift:+d}"
        if name == "lost":
            worker = data.draw(st.sampled_from(WORKERS), label="worker")
            await self.lost(worker)
            return f"lost {worker}"
        if name == "cancel":
            pair = self.pick(data)
            await self.cancel(pair)
            return f"cancel {pair.task_id}"
        await (self.reap() if name == "reap" else self.wait())
        return name

    async def claim(self, worker: str, expired: bool) -> None:
        lease = -1.0 if expired else 600.0
        claimed = await dispatch.claim(self.db, [worker] * len(self.pairs), "c1", lease)
        expected = set()
        for pair in self.pairs:
            if self.apply(pair, lifecycle.claim(pair.state, worker, NOW)):
                pair.lease_expired = expired
                expected.add(pair.task_id)
        assert {c.task_id for c in claimed} == expected
        assert all(c.worker_id == worker for c in claimed)

    async def reports(self, items: list[tuple[Pair, ReportKind, int, float]]) -> None:
        at = datetime.now(UTC)
        batch = [
            Report(p.task_id, p.state.attempt + shift, kind, at, error=ERRORS.get(kind),
                   exit_code=1 if kind is ReportKind.FAILED else None, jitter=jitter)
            for p, kind, shift, jitter in items
        ]
        applied, stale = await reports.apply_reports(
            self.db, batch, retry_base_s=self.base, retry_cap_s=self.cap)
        expected_stale = []
        for report in collapse(batch):
            pair = self.by_id[report.task_id]
            delay = exponential(pair.state.failures + 1, base=self.base, cap=self.cap,
                                jitter=report.jitter)
            outcome = lifecycle.reported(pair.state, report.kind, report.attempt,
                                         error=report.error, retry_at=NOW + delay)
            if not self.apply(pair, outcome):
                expected_stale.append(report.task_id)
        assert stale == expected_stale
        assert applied == len(collapse(batch)) - len(stale)

    async def undo(self, pair: Pair, shift: int) -> None:
        attempt = pair.state.attempt + shift
        count = await dispatch.undo_push(self.db, [(pair.task_id, attempt)])
        assert count == int(self.apply(pair, lifecycle.push_failed(pair.state, attempt)))

    async def lost(self, worker: str) -> None:
        rows = await recovery.recover_worker_tasks(self.db, worker)
        expected = set()
        for pair in self.pairs:
            if self.apply(pair, lifecycle.worker_lost(pair.state, worker)):
                expected.add((pair.task_id, pair.state.status.value))
        assert {(r["task_id"], r["status"]) for r in rows} == expected

    async def reap(self) -> None:
        rows = await recovery.recover_expired_leases(self.db)
        expected = set()
        for pair in self.pairs:
            state = pair.state
            if state.status in HELD and pair.lease_expired:
                assert state.worker_id is not None
                assert self.apply(pair, lifecycle.worker_lost(state, state.worker_id))
                expected.add((pair.task_id, pair.state.status.value))
        assert {(r["task_id"], r["status"]) for r in rows} == expected

    async def cancel(self, pair: Pair) -> None:
        before = pair.state
        outcome, row = await db_tasks.cancel_task(self.db, pair.task_id)
        if self.apply(pair, lifecycle.cancel(before)):
            assert outcome == "cancelled"
            assert row["held_by"] == (before.worker_id if before.status in HELD else None)
        else:
            assert outcome == "finished"

    async def wait(self) -> None:
        """WAIT seconds pass: every due time comes that much nearer, on both sides."""
        await self.db.execute(
            "UPDATE tasks SET scheduled_at = scheduled_at - make_interval(secs => $2) "
            "WHERE task_id = ANY($1::uuid[])", [p.task_id for p in self.pairs], WAIT)
        for pair in self.pairs:
            pair.state = replace(pair.state, scheduled_at=pair.state.scheduled_at - WAIT)

    async def compare(self, step: str) -> None:
        rows = await self.db.fetch(
            "SELECT task_id, status, attempt, failures, losses, worker_id, error, "
            "extract(epoch FROM scheduled_at - clock_timestamp())::float8 AS due_in "
            "FROM tasks WHERE task_id = ANY($1::uuid[])",
            [p.task_id for p in self.pairs],
        )
        assert len(rows) == len(self.pairs)
        for row in rows:
            state = self.by_id[row["task_id"]].state
            holder = row["worker_id"] if row["status"] in HELD else None
            got = (row["status"], row["attempt"], row["failures"], row["losses"], holder,
                   row["error"])
            want = (state.status.value, state.attempt, state.failures, state.losses,
                    state.worker_id, state.error)
            assert got == want, (step, state)
            if state.status is Status.SCHEDULED:
                due_in = state.scheduled_at - NOW
                assert (row["due_in"] <= 0) == (due_in <= 0), (step, state, row["due_in"])
                assert abs(row["due_in"] - due_in) < SLACK, (step, state, row["due_in"])


async def new_pairs(db: Database, specs: list[tuple[float, int, int, bool]]) -> list[Pair]:
    now = await db_now(db)
    tasks = [new_task(f"t{i}", now + timedelta(seconds=offset), max_attempts=attempts,
                      at_most_once=amo)
             for i, (offset, attempts, _, amo) in enumerate(specs)]
    await db_tasks.insert_tasks(db, tasks)
    await db.execute(
        "UPDATE tasks t SET max_losses = l.max_losses "
        "FROM unnest($1::uuid[], $2::int[]) AS l(task_id, max_losses) WHERE t.task_id = l.task_id",
        [t.task_id for t in tasks], [losses for _, _, losses, _ in specs],
    )
    return [
        Pair(t.task_id, TaskState(Status.SCHEDULED, NOW + offset, max_attempts=attempts,
                                  max_losses=losses, at_most_once=amo))
        for t, (offset, attempts, losses, amo) in zip(tasks, specs, strict=True)
    ]


@settings(max_examples=40, deadline=None, database=None)
@given(specs=TASKS, retry=st.sampled_from(sorted(RETRIES)), data=st.data())
async def test_core_and_sql_agree_on_every_step(
    module_database_url: str, specs: list[tuple[float, int, int, bool]], retry: str,
    data: st.DataObject,
) -> None:
    with trio.fail_after(60):
        async with open_db(module_database_url, min_size=1, max_size=1) as db:
            await db.execute("TRUNCATE tasks, workers")
            both = Both(db, await new_pairs(db, specs), RETRIES[retry])
            await both.compare("inserted")
            for _ in range(data.draw(st.integers(5, 30), label="steps")):
                if all(p.state.status.terminal for p in both.pairs):
                    break  # nothing can change any more
                await both.compare(await both.step(data))


K = ReportKind
# Paths the random runs reach only now and then, walked every time: (tasks, retry policy,
# steps, the statuses they end in). Reports name tasks by index: (task, kind, attempt
# shift, jitter).
SCRIPTS: dict[str, tuple[list[tuple[float, int, int, bool]], str, list[tuple[Any, ...]],
                         list[Status]]] = {
    "two retries with growing delays, then a completion clears the error": (
        [(DUE, 3, 3, False)], "later",
        [("claim", "w1", False), ("reports", [(0, K.FAILED, 0, 0.3)]), ("wait",),
         ("claim", "w2", False), ("reports", [(0, K.STARTED, 0, 0.0), (0, K.FAILED, 0, 1.0)]),
         ("wait",), ("claim", "w1", False), ("reports", [(0, K.STARTED, 0, 0.5)]),
         ("reports", [(0, K.FAILED, -1, 0.5), (0, K.COMPLETED, 0, 0.5)])],
        [Status.COMPLETED],
    ),
    "the last retry fails for good; at-most-once never retries": (
        [(DUE, 2, 3, False), (DUE, 3, 3, True)], "at once",
        [("claim", "w1", False), ("reports", [(0, K.FAILED, 0, 0.1), (1, K.FAILED, 0, 0.1)]),
         ("claim", "w2", False), ("reports", [(0, K.FAILED, 0, 0.9)])],
        [Status.FAILED, Status.FAILED],
    ),
    "losses up to the cap, by worker and by lease; at-most-once lost at once": (
        [(DUE, 1, 2, False), (DUE, 1, 3, True), (LATER, 1, 3, False)], "at once",
        [("claim", "w1", False), ("reports", [(1, K.STARTED, 0, 0.0)]), ("lost", "w1"),
         ("claim", "w2", True), ("lost", "w1"), ("reap",), ("wait",), ("claim", "w2", True),
         ("reap",), ("claim", "w1", False)],
        [Status.FAILED, Status.FAILED, Status.PICKED],
    ),
    "hand-backs, undone pushes and cancels of held, scheduled and finished tasks": (
        [(DUE, 1, 3, False), (DUE, 1, 3, False), (DUE, 1, 3, False), (LATER, 1, 3, False)],
        "at once",
        [("claim", "w1", False),
         ("reports", [(0, K.RETURNED, 0, 0.0), (1, K.STARTED, 0, 0.0), (1, K.STARTED, 0, 0.0)]),
         ("reports", [(1, K.RETURNED, 0, 0.0)]), ("reports", [(1, K.STARTED, 0, 0.0)]),
         ("undo", 2, 1), ("undo", 2, 0), ("undo", 1, 0), ("cancel", 1),
         ("reports", [(1, K.COMPLETED, 0, 0.0)]), ("cancel", 1), ("cancel", 3),
         ("claim", "w2", False), ("reports", [(0, K.CANCELLED, 0, 0.0)]),
         ("reports", [(2, K.RETURNED, -1, 0.0), (2, K.COMPLETED, 0, 0.0)])],
        [Status.CANCELLED, Status.CANCELLED, Status.COMPLETED, Status.CANCELLED],
    ),
}


@pytest.mark.parametrize("name", list(SCRIPTS))
async def test_core_and_sql_agree_on_the_paths_that_matter(db_url: str, name: str) -> None:
    specs, retry, steps, final = SCRIPTS[name]
    with trio.fail_after(30):
        async with open_db(db_url, min_size=1, max_size=1) as db:
            both = Both(db, await new_pairs(db, specs), RETRIES[retry])
            await both.compare("inserted")
            for step in steps:
                method, *args = step
                if method == "reports":
                    args = [[(both.pairs[i], kind, shift, jitter)
                             for i, kind, shift, jitter in args[0]]]
                elif method in ("undo", "cancel"):
                    args[0] = both.pairs[args[0]]
                await getattr(both, method)(*args)
                await both.compare(repr(step))
            assert [p.state.status for p in both.pairs] == final
