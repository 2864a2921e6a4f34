"""tm.core.ids: UUIDv7 task ids — well-formed, distinct, ascending, time-prefixed."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tm.core.ids import ENTROPY_BYTES, uuid7_time_ms, uuid7s
from tm.ids import new_ids

MAX_MS = (1 << 48) - 1

entropy = st.binary(min_size=ENTROPY_BYTES, max_size=ENTROPY_BYTES)


@given(st.integers(0, 300), st.integers(0, MAX_MS), entropy)
def test_a_batch_is_well_formed_distinct_and_ascending(
    count: int, unix_ms: int, random: bytes
) -> None:
    ids = uuid7s(count, unix_ms, random)
    assert len(ids) == count
    assert len(set(ids)) == count
    assert ids == sorted(ids)
    for value in ids:
        assert value.version == 7
        assert value.variant == uuid.RFC_4122
        assert uuid7_time_ms(value) == unix_ms
        assert uuid.UUID(str(value)) == value  # survives the text form


@given(st.integers(0, MAX_MS - 1), st.integers(1, 1000), entropy, entropy)
def test_a_later_millisecond_sorts_after(
    unix_ms: int, later_by: int, first: bytes, second: bytes
) -> None:
    [early] = uuid7s(1, unix_ms, first)
    later = min(MAX_MS, unix_ms + later_by)
    assert uuid7s(5, later, second)[0] > early


def test_the_largest_start_does_not_overflow_into_the_time() -> None:
    ids = uuid7s(10_000, 12345, b"\xff" * ENTROPY_BYTES)
    assert {uuid7_time_ms(i) for i in ids} == {12345}
    assert ids == sorted(ids) and len(set(ids)) == 10_000


@pytest.mark.parametrize(
    ("count", "unix_ms", "random"),
    [(-1, 0, b"\0" * ENTROPY_BYTES), (1, -1, b"\0" * ENTROPY_BYTES),
     (1, MAX_MS + 1, b"\0" * ENTROPY_BYTES), (1, 0, b"\0")],
)
def test_bad_arguments_are_refused(count: int, unix_ms: int, random: bytes) -> None:
    with pytest.raises(ValueError):
        uuid7s(count, unix_ms, random)


def test_fresh_ids_differ_between_batches() -> None:
    first, second = new_ids(1000), new_ids(1000)
    assert not set(first) & set(second)


def test_fresh_ids_are_uuids_that_behave_as_the_standard_type() -> None:
    """new_ids makes asyncpg's C UUID type: it must compare, hash, sort and format like
    uuid.UUID (task ids meet standard UUIDs parsed from URLs and in sets)."""
    ids = new_ids(100)
    assert ids == sorted(ids) and len(set(ids)) == 100
    for value in ids:
        standard = uuid.UUID(str(value))
        assert isinstance(value, uuid.UUID)
        assert value == standard and hash(value) == hash(standard)
        assert (value.int, value.bytes, value.version) == (
            standard.int, standard.bytes, standard.version)
        assert str(value) == str(standard) and value in {standard}
    assert sorted([uuid.UUID(str(v)) for v in reversed(ids)]) == ids
