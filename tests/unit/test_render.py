"""tm.scheduler.render: the fast answer to a batch equals the general one."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tm.core.tasks import TASK_FIELDS, NewTask
from tm.db.tasks import Inserted
from tm.scheduler.render import inserted_json, task_json

CREATED = datetime(2026, 11, 27, 8, 0, 0, 123456, tzinfo=UTC)

times = st.none() | st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9998, 1, 1), timezones=st.just(UTC)
)


@st.composite
def results(draw: st.DrawFn) -> Inserted:
    task = NewTask(
        task_id=draw(st.uuids()),
        command=draw(st.text(min_size=1, max_size=20)),
        scheduled_at=draw(times),
        max_attempts=draw(st.integers(1, 100)),
        timeout_s=draw(st.none() | st.floats(0.1, 100)),
        idempotency_key=draw(st.none() | st.text(min_size=1, max_size=5)),
        at_most_once=draw(st.booleans()),
    )
    if draw(st.booleans()):
        return Inserted(task, True, CREATED + timedelta(seconds=draw(st.integers(0, 5))))
    existing = {field: None for field in TASK_FIELDS} | {
        "task_id": uuid.uuid4(), "command": "older", "status": "completed",
        "scheduled_at": CREATED, "created_at": CREATED, "completed_at": CREATED,
        "attempt": 1, "max_attempts": 1, "worker_id": "w1", "exit_code": 0, "output": "ok",
    }
    return Inserted(task, False, existing=existing)


@settings(max_examples=200, deadline=None)
@given(st.lists(results(), max_size=10))
def test_the_answer_to_a_batch_is_each_rows_json_in_contract_order(
    batch: list[Inserted],
) -> None:
    answer = inserted_json(batch)
    assert answer == [task_json(r.row) for r in batch]
    for item in answer:
        assert list(item) == list(TASK_FIELDS)
