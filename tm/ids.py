"""New task ids from the clock and the OS's random source (see tm.core.ids)."""

from __future__ import annotations

import os
import time
import uuid

from tm.aio.pg import uuid_from_bytes
from tm.core.ids import ENTROPY_BYTES, uuid7_ints


def new_ids(count: int) -> list[uuid.UUID]:
    """`count` fresh UUIDv7 task ids, ascending; one draw from the random source per batch."""
    values = uuid7_ints(count, time.time_ns() // 1_000_000, os.urandom(ENTROPY_BYTES))
    return [uuid_from_bytes(value.to_bytes(16, "big")) for value in values]


def new_id() -> uuid.UUID:
    [value] = new_ids(1)
    return value
