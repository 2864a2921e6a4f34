"""tm.core.tasks: checking a client's request to create a task, and task ids."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tm.core.tasks import (
    MAX_ATTEMPTS_LIMIT,
    MAX_COMMAND_BYTES,
    MAX_IDEMPOTENCY_KEY,
    MAX_TIMEOUT_S,
    TERMINAL,
    InvalidInput,
    NewTask,
    Status,
    parse_new_task,
    parse_new_tasks,
    parse_task_id,
)

FAST = settings(max_examples=200, deadline=None, database=None)
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def parse(body: object) -> NewTask:
    return parse_new_task(body, ID)


def test_minimal_task_gets_defaults() -> None:
    task = parse({"command": "echo hi"})
    assert task == NewTask(
        task_id=ID,
        command="echo hi",
        scheduled_at=None,
        max_attempts=1,
        timeout_s=None,
        idempotency_key=None,
        at_most_once=False,
    )


def test_full_task() -> None:
    task = parse(
        {
            "command": "sleep 1 && echo 'done'",
            "scheduled_at": "2026-11-27T09:01:57.5+05:30",
            "max_attempts": 3,
            "timeout_s": 30,
            "idempotency_key": "nightly-2026-11-27",
            "at_most_once": True,
        }
    )
    assert task.task_id == ID
    assert task.command == "sleep 1 && echo 'done'"
    assert task.scheduled_at == datetime(2026, 11, 27, 3, 31, 57, 500000, tzinfo=UTC)
    assert task.scheduled_at.tzinfo is UTC
    assert task.max_attempts == 3
    assert task.timeout_s == 30.0
    assert isinstance(task.timeout_s, float)
    assert task.idempotency_key == "nightly-2026-11-27"
    assert task.at_most_once is True


def test_null_optional_fields_mean_defaults() -> None:
    task = parse(
        {
            "command": "true",
            "scheduled_at": None,
            "max_attempts": None,
            "timeout_s": None,
            "idempotency_key": None,
            "at_most_once": None,
        }
    )
    assert (task.scheduled_at, task.max_attempts, task.timeout_s) == (None, 1, None)
    assert (task.idempotency_key, task.at_most_once) == (None, False)


def test_limits_are_inclusive() -> None:
    assert parse({"command": "x" * MAX_COMMAND_BYTES}).command == "x" * MAX_COMMAND_BYTES
    # Bytes, not characters: 2-byte characters fill the limit at half the count.
    assert len(parse({"command": "é" * (MAX_COMMAND_BYTES // 2)}).command) == 32 * 1024
    assert parse({"command": "x", "max_attempts": 1}).max_attempts == 1
    assert parse({"command": "x", "max_attempts": MAX_ATTEMPTS_LIMIT}).max_attempts == 100
    assert parse({"command": "x", "timeout_s": MAX_TIMEOUT_S}).timeout_s == 7 * 24 * 3600.0
    assert parse({"command": "x", "timeout_s": 0.001}).timeout_s == 0.001
    key = "k" * MAX_IDEMPOTENCY_KEY
    assert parse({"command": "x", "idempotency_key": key}).idempotency_key == key
    assert parse({"command": "x", "idempotency_key": "k"}).idempotency_key == "k"
    # Whitespace around a real command is the command's business.
    assert parse({"command": "  ls\n"}).command == "  ls\n"


INVALID: list[tuple[object, str]] = [
    # (body, a substring the message must contain)
    ({}, "command is required"),
    ({"command": None}, "command is required"),
    ({"command": 42}, "command must be a string"),
    ({"command": ["ls"]}, "command must be a string"),
    ({"command": ""}, "command must not be empty"),
    ({"command": " \t\n "}, "command must not be empty"),
    ({"command": "x" * (MAX_COMMAND_BYTES + 1)}, "command is longer than 65536 bytes"),
    ({"command": "é" * (MAX_COMMAND_BYTES // 2) + "x"}, "command is longer than 65536 bytes"),
    ({"command": "echo a\x00b"}, "command must not contain NUL"),
    ({"command": "echo \ud800"}, "command is not valid Unicode"),
    ({"command": "x", "scheduled_at": "2026-11-27T03:31:57"}, "scheduled_at has no UTC offset"),
    ({"command": "x", "scheduled_at": "soon"}, "scheduled_at must be a date and time"),
    ({"command": "x", "scheduled_at": "2026-11-27Tnoon"}, "scheduled_at is not an RFC 3339 time"),
    ({"command": "x", "scheduled_at": "2026-11-27"}, "scheduled_at must be a date and time"),
    ({"command": "x", "scheduled_at": 1795750317}, "scheduled_at must be a string"),
    ({"command": "x", "scheduled_at": True}, "scheduled_at must be a string"),
    ({"command": "x", "max_attempts": True}, "max_attempts must be an integer"),
    ({"command": "x", "max_attempts": 2.0}, "max_attempts must be an integer"),
    ({"command": "x", "max_attempts": "2"}, "max_attempts must be an integer"),
    ({"command": "x", "max_attempts": 0}, "max_attempts must be between 1 and 100"),
    ({"command": "x", "max_attempts": -1}, "max_attempts must be between 1 and 100"),
    ({"command": "x", "max_attempts": 101}, "max_attempts must be between 1 and 100"),
    ({"command": "x", "timeout_s": 0}, "timeout_s must be greater than 0"),
    ({"command": "x", "timeout_s": 0.0}, "timeout_s must be greater than 0"),
    ({"command": "x", "timeout_s": -5}, "timeout_s must be greater than 0"),
    ({"command": "x", "timeout_s": math.nan}, "timeout_s must be greater than 0"),
    ({"command": "x", "timeout_s": math.inf}, "timeout_s must be greater than 0"),
    ({"command": "x", "timeout_s": MAX_TIMEOUT_S + 1}, "timeout_s must be greater than 0"),
    ({"command": "x", "timeout_s": True}, "timeout_s must be a number"),
    ({"command": "x", "timeout_s": "30"}, "timeout_s must be a number"),
    ({"command": "x", "idempotency_key": ""}, "idempotency_key must be 1 to 200 characters"),
    ({"command": "x", "idempotency_key": "k" * 201}, "idempotency_key must be 1 to 200"),
    ({"command": "x", "idempotency_key": 7}, "idempotency_key must be a string"),
    ({"command": "x", "idempotency_key": ["k"]}, "idempotency_key must be a string"),
    ({"command": "x", "idempotency_key": "a\x00"}, "idempotency_key must not contain NUL"),
    ({"command": "x", "at_most_once": "true"}, "at_most_once must be true or false"),
    ({"command": "x", "at_most_once": 1}, "at_most_once must be true or false"),
    ({"command": "x", "at_most_once": 0}, "at_most_once must be true or false"),
    ({"command": "x", "comand": "y"}, "unknown field(s): 'comand'"),
    ({"command": "x", "task_id": str(ID), "status": "completed"},
     "unknown field(s): 'status', 'task_id'"),
    ([{"command": "x"}], "a task must be a JSON object"),
    ("echo hi", "a task must be a JSON object"),
    (None, "a task must be a JSON object"),
]


@pytest.mark.parametrize(("body", "message"), INVALID)
def test_invalid_input_names_the_field(body: object, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse(body)
    assert message in str(info.value)
    # InvalidInput is a ValueError, so generic handlers still see a client error.
    assert isinstance(info.value, ValueError)


def test_unknown_fields_are_listed_at_most_five() -> None:
    body = {"command": "x", **{f"f{i}": i for i in range(8)}}
    with pytest.raises(InvalidInput) as info:
        parse(body)
    assert str(info.value) == "unknown field(s): 'f0', 'f1', 'f2', 'f3', 'f4'"


def test_unknown_field_is_reported_before_a_bad_known_field() -> None:
    with pytest.raises(InvalidInput, match="unknown field"):
        parse({"command": 5, "extra": 1})


def test_huge_integer_timeout_is_invalid_input() -> None:
    body = json.loads('{"command": "x", "timeout_s": 1' + "0" * 400 + "}")
    with pytest.raises(InvalidInput, match="timeout_s"):
        parse(body)


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+05:00", "1969-12-31T23:59:59Z",
                                  "1970-01-01T00:30:00+01:00", "9999-01-01T00:00:00Z"])
def test_out_of_range_scheduled_at_is_invalid_input(text: str) -> None:
    with pytest.raises(InvalidInput, match="scheduled_at"):
        parse({"command": "x", "scheduled_at": text})


def test_range_edges_are_accepted() -> None:
    assert parse({"command": "x", "scheduled_at": "1970-01-01T00:00:00Z"}).scheduled_at
    assert parse({"command": "x", "scheduled_at": "9998-12-31T23:59:59.999999Z"}).scheduled_at


def test_idempotency_key_with_lone_surrogate_is_invalid_input() -> None:
    body = json.loads('{"command": "x", "idempotency_key": "k\\ud800"}')
    try:
        task = parse(body)
    except InvalidInput as exc:
        assert "idempotency_key" in str(exc)
    else:
        raise AssertionError(f"accepted unstorable key {task.idempotency_key!r}")


# --- properties -------------------------------------------------------------------------

commands = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=50,
).filter(lambda s: s.strip() != "")
offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda m: timezone(timedelta(minutes=m))
)
# The accepted range: 1970 (inclusive) to 9999 (exclusive), in UTC; offsets up to a day, so
# stay a day clear of both ends.
times = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 30), timezones=offsets
)
keys = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=MAX_IDEMPOTENCY_KEY,
)
timeouts = st.one_of(
    st.integers(min_value=1, max_value=int(MAX_TIMEOUT_S)),
    st.floats(min_value=0.0, max_value=MAX_TIMEOUT_S, exclude_min=True),
)


@st.composite
def valid_bodies(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A valid body, and the NewTask fields it must produce."""
    body: dict[str, Any] = {"command": draw(commands)}
    expected: dict[str, Any] = {"command": body["command"], "scheduled_at": None,
                                "max_attempts": 1, "timeout_s": None,
                                "idempotency_key": None, "at_most_once": False}
    if draw(st.booleans()):
        at = draw(times)
        body["scheduled_at"] = at.isoformat()
        expected["scheduled_at"] = at.astimezone(UTC)
    if draw(st.booleans()):
        body["max_attempts"] = expected["max_attempts"] = draw(
            st.integers(min_value=1, max_value=MAX_ATTEMPTS_LIMIT)
        )
    if draw(st.booleans()):
        body["timeout_s"] = draw(timeouts)
        expected["timeout_s"] = float(body["timeout_s"])
    if draw(st.booleans()):
        body["idempotency_key"] = expected["idempotency_key"] = draw(keys)
    if draw(st.booleans()):
        body["at_most_once"] = expected["at_most_once"] = draw(st.booleans())
    return body, expected


@FAST
@given(valid_bodies(), st.uuids())
def test_valid_bodies_round_trip(case: tuple[dict[str, Any], dict[str, Any]],
                                 new_id: uuid.UUID) -> None:
    body, expected = case
    # Through real JSON, as the HTTP API receives it.
    task = parse_new_task(json.loads(json.dumps(body)), new_id)
    assert task.task_id == new_id
    for name, value in expected.items():
        assert getattr(task, name) == value, name
    if task.scheduled_at is not None:
        assert task.scheduled_at.tzinfo is UTC


@FAST
@given(st.lists(valid_bodies(), min_size=1, max_size=8), st.data())
def test_a_batch_parses_as_its_tasks_one_by_one(
    cases: list[tuple[dict[str, Any], dict[str, Any]]], data: st.DataObject
) -> None:
    """The batch path (which parses each distinct time once) agrees with the single path."""
    bodies = [json.loads(json.dumps(body)) for body, _ in cases]
    if data.draw(st.booleans()):  # batches often share one time: make the cache work
        shared = data.draw(st.sampled_from(bodies)).get("scheduled_at")
        for body in bodies:
            body["scheduled_at"] = shared
    ids = [uuid.UUID(int=i) for i in range(len(bodies))]
    one_by_one = [parse_new_task(b, i) for b, i in zip(bodies, ids, strict=True)]
    assert parse_new_tasks(bodies, ids) == one_by_one


def test_a_bad_task_in_a_batch_is_named_by_its_index() -> None:
    bodies: list[object] = [{"command": "ok"}, {"command": "ok", "scheduled_at": "2026-01-01"}]
    with pytest.raises(InvalidInput, match=r"^tasks\[1\]: scheduled_at"):
        parse_new_tasks(bodies, [ID, ID])
    with pytest.raises(InvalidInput, match=r"^tasks\[0\]: a task must be a JSON object"):
        parse_new_tasks([[]], [ID])


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    # Bounded so every int converts to a float (see test_huge_integer_timeout_is_invalid_input).
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(),
    st.text(max_size=20),
    times.map(lambda t: t.isoformat()),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
field_names = st.sampled_from(
    ["command", "scheduled_at", "max_attempts", "timeout_s", "idempotency_key", "at_most_once"]
) | st.text(max_size=8)


@FAST
@given(st.dictionaries(field_names, json_values, max_size=7) | json_values)
def test_any_json_body_parses_or_raises_invalid_input(body: object) -> None:
    try:
        task = parse(body)
    except InvalidInput as exc:
        assert str(exc)  # a message for a person, never empty
    else:
        assert isinstance(body, dict)
        assert task.command == body["command"]
        assert task.command.strip()
        assert 1 <= task.max_attempts <= MAX_ATTEMPTS_LIMIT
        assert task.timeout_s is None or 0 < task.timeout_s <= MAX_TIMEOUT_S
        assert isinstance(task.at_most_once, bool)


@FAST
@given(valid_bodies(), st.sampled_from(["max_attempts", "timeout_s", "at_most_once"]),
       st.one_of(st.text(min_size=1, max_size=5), st.lists(st.integers(), max_size=2)))
def test_wrong_type_in_a_valid_body_names_that_field(
    case: tuple[dict[str, Any], dict[str, Any]], field: str, bad: object
) -> None:
    body = {**case[0], field: bad}
    with pytest.raises(InvalidInput) as info:
        parse(body)
    assert str(info.value).startswith(field)


# --- task ids ---------------------------------------------------------------------------


@FAST
@given(st.uuids())
def test_task_id_round_trips(value: uuid.UUID) -> None:
    assert parse_task_id(str(value)) == value
    assert parse_task_id(str(value).upper()) == value
    assert parse_task_id(f"  {value}\n") == value
    assert parse_task_id(value.hex) == value


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "task_id is required"),
        ("", "task_id is required"),
        (42, "task_id must be a string"),
        (ID, "task_id must be a string"),
        ("nope", "task_id is not a valid UUID: 'nope'"),
        ("   ", "task_id is not a valid UUID"),
        (str(ID)[:-1], "task_id is not a valid UUID"),
        (str(ID) + "0", "task_id is not a valid UUID"),
    ],
)
def test_bad_task_ids(raw: object, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_task_id(raw)
    assert message in str(info.value)


def test_bad_task_id_message_is_truncated() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_task_id("z" * 1000)
    assert str(info.value) == f"task_id is not a valid UUID: {'z' * 64!r}"


@FAST
@given(st.text(max_size=40))
def test_any_text_is_a_uuid_or_invalid_input(raw: str) -> None:
    assume(raw != "")
    try:
        value = parse_task_id(raw)
    except InvalidInput as exc:
        assert str(exc).startswith("task_id ")
    else:
        assert isinstance(value, uuid.UUID)


def test_status_terminal_flags() -> None:
    assert {s for s in Status if s.terminal} == TERMINAL
    assert {Status.COMPLETED, Status.FAILED, Status.CANCELLED} == TERMINAL
    assert not Status.SCHEDULED.terminal
    assert not Status.PICKED.terminal
    assert not Status.RUNNING.terminal
