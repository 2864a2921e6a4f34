"""New task ids from the clock and the OS's random source (see tm.core.ids)."""

from __future__ import annotations

import os
import time
import uuid

from tm.core.ids import ENTROPY_BYTES, uuid7s


def new_ids(count: int) -> list[uuid.UUID]:
    """`count` fresh UUIDv7 task ids, ascending; one draw from the random source per batch."""
    return uuid7s(count, time.time_ns() // 1_000_000, os.urandom(ENTROPY_BYTES))


def new_id() -> uuid.UUID:
    [value] = new_ids(1)
    return value
