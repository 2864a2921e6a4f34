"""tm.db.transitions: the lifecycle table as SQL text.

What the fragments mean is checked against PostgreSQL by
tests/integration/test_lifecycle_sql.py; here, what they say, so that a change to the table
shows up as a readable change of SQL, and the guards keep the exact spelling of the
partial indexes' predicates (schema/0001_tasks.sql) that the claim and recovery plans use.
"""

from __future__ import annotations

from tm.core.lifecycle import RETRIES, TRANSITIONS, Action
from tm.core.reports import ReportKind
from tm.core.tasks import HELD, Status
from tm.db import transitions as sql

RETRY_LEFT = "t.failures + 1 < t.max_attempts AND NOT t.at_most_once"
LOSS_LEFT = "t.losses + 1 < t.max_losses AND NOT t.at_most_once"


def test_guards_spell_the_index_predicates() -> None:
    assert sql.accepts(Action.CLAIM, "status") == "status = 'scheduled'"
    assert sql.accepts(Action.WORKER_LOST) == "t.status IN ('picked', 'running')"
    assert sql.accepts(Action.PUSH_FAILED) == "t.status = 'picked'"
    assert sql.accepts(Action.CANCEL, "old.status") == (
        "old.status IN ('scheduled', 'picked', 'running')")
    assert sql.status_in("x", reversed(sorted(HELD))) == "x IN ('picked', 'running')"


def test_targets() -> None:
    assert sql.target(Action.CLAIM) == "'picked'"
    assert sql.target(Action.WORKER_LOST) == (
        f"CASE WHEN {LOSS_LEFT} THEN 'scheduled' ELSE 'failed' END")
    assert sql.ends_in(Action.WORKER_LOST, Status.FAILED) == f"NOT ({LOSS_LEFT})"
    assert sql.ends_in(Action.WORKER_LOST, Status.SCHEDULED) == LOSS_LEFT
    assert sql.ends_in(Action.WORKER_LOST, Status.SCHEDULED, Status.FAILED) == "TRUE"
    assert sql.ends_in(Action.CLAIM, Status.FAILED) == "FALSE"
    assert sql.exhausted_error(TRANSITIONS[Action.WORKER_LOST].budget or RETRIES,
                               "t.error") == "'worker lost'"
    assert sql.exhausted_error(RETRIES, "u.error") == "u.error"
    assert sql.literal("it's") == "'it''s'"


def test_the_report_statement_fragments() -> None:
    by = sql.ByKind("u.kind", "t")
    assert by.status() == (
        "CASE u.kind"
        "\n        WHEN 1 THEN 'running'"
        "\n        WHEN 2 THEN 'completed'"
        f"\n        WHEN 3 THEN CASE WHEN {RETRY_LEFT} THEN 'scheduled' ELSE 'failed' END"
        "\n        WHEN 4 THEN 'cancelled'"
        "\n        WHEN 5 THEN 'scheduled'"
        "\n    END"
    )
    assert by.fits() == ("t.status = ANY(CASE WHEN u.kind IN (1, 5) THEN ARRAY['picked'] "
                         "ELSE ARRAY['picked', 'running'] END)")
    assert by.ends_in(Status.SCHEDULED) == f"(u.kind = 5 OR (u.kind = 3 AND {RETRY_LEFT}))"
    assert by.ends_in(Status.FAILED) == f"(u.kind = 3 AND NOT ({RETRY_LEFT}))"
    assert by.ends_in(*HELD) == "u.kind = 1"
    assert by.ends_in(Status.PICKED) == "FALSE"
    assert by.spend(RETRIES) == "t.failures + (u.kind = 3)::int"
    assert by.is_(ReportKind.FAILED, ReportKind.COMPLETED) == "u.kind IN (2, 3)"
    only_picked = sql.ByKind(kinds=[ReportKind.STARTED, ReportKind.RETURNED])
    assert only_picked.fits() == "t.status = 'picked'"


def test_every_outcome_has_a_condition_and_no_other_status_does() -> None:
    for event, transition in TRANSITIONS.items():
        for status in Status:
            condition = sql.ends_in(event, status)
            if status not in transition.outcomes:
                assert condition == "FALSE", (event, status)
            elif transition.outcomes == {status}:
                assert condition == "TRUE", (event, status)
            else:
                assert condition not in ("TRUE", "FALSE"), (event, status)
