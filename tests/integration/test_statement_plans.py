"""The plans of the statements on the hot paths, as the services run them.

Most of these statements are built from the lifecycle table (tm/db/transitions.py): their
status guards must keep spelling the partial indexes' predicates, or the claim and the
recovery would read the whole table. (Statements whose index choice depends on statistics
an empty table does not have are left out.) Each statement is explained with real parameters on
an empty table with sequential scans off, so the plan shows whether an index can serve it
at all (an index whose predicate the statement does not imply cannot).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import trio

from tests.integration.helpers import open_db
from tm.aio.pg import Connection
from tm.db import dispatch, recovery, reports, tasks

NOW = datetime.now(UTC)
ONE = [uuid.uuid4()]


async def plan(conn: Connection, statement: str, *args: object) -> str:
    rows = await conn.fetch("EXPLAIN " + statement, *args)
    return "\n".join(r[0] for r in rows)


async def test_hot_statements_use_their_indexes(db_url: str) -> None:
    async def explain_all(conn: Connection) -> dict[str, str]:
        await conn.execute("SET LOCAL enable_seqscan = off")
        await conn.execute(dispatch.IN_DUE_ORDER)
        return {
            "claim": await plan(conn, dispatch.CLAIM, ["w1", "w2"], 2, "c1", 30.0),
            "next due": await plan(conn, dispatch.NEXT_DUE_IN),
            "reports": await plan(
                conn, reports.APPLY_REPORTS, ONE, [1], [2], [NOW], [None], [0], ["out"],
                [1.0, 2.0], [None], [0.75]),
            "lost worker": await plan(conn, recovery.RECOVER_WORKER_TASKS, "w1"),
            "expired leases": await plan(conn, recovery.RECOVER_EXPIRED_LEASES),
            "cancel": await plan(conn, tasks.CANCEL_TASK, ONE[0]),
        }

    with trio.fail_after(20):
        async with open_db(db_url) as db:
            plans = await db.transaction(explain_all)
    expected = {
        "claim": "tasks_scheduled_due",
        "next due": "tasks_scheduled_due",
        "reports": "tasks_pkey",
        "lost worker": "tasks_held_by_worker",
        "expired leases": "tasks_held_lease",
        "cancel": "tasks_pkey",
    }
    for name, index in expected.items():
        assert f"using {index} on tasks" in plans[name], (name, plans[name])
    # The due index is read in order and the walk stops early: no sort of due tasks (the
    # claim sorts only the rows it locked, to number them).
    assert "Sort" not in plans["next due"], plans["next due"]
    due = plans["claim"].split("CTE due")[1].split("\n  ->")[0]
    assert "Index Scan using tasks_scheduled_due" in due and "Sort" not in due, due
