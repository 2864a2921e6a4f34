"""Task ids: UUID version 7 (RFC 9562), time-ordered.

A v7 id starts with its creation time in Unix milliseconds, so new ids land at the right
edge of the primary-key and due-time indexes instead of on random pages: inserting a batch
touches a few index pages, not thousands (random v4 ids made every insert rewrite a random
page, and the first write of each page after a checkpoint logs the whole page).

The 74 bits after the time are random for the first id of a batch and count up from there
for the others (RFC 9562's "monotonic random" method), so one batch's ids ascend in input
order. The start is drawn from 73 bits, leaving room to count up to 2**73 ids without
overflowing. Ids stay unguessable to anyone who has not seen one of the same batch.

Pure: the caller supplies the time and the random bytes (`tm.ids.new_ids` does).
"""

from __future__ import annotations

import uuid

ENTROPY_BYTES = 10  # per batch; 73 bits of them are used

_VERSION = 0x7 << 76
_VARIANT = 0b10 << 62
_RAND_B_BITS = 62
_RAND_B_MASK = (1 << _RAND_B_BITS) - 1
_DRAWN_MASK = (1 << 73) - 1
_MAX_MS = (1 << 48) - 1


def uuid7_ints(count: int, unix_ms: int, entropy: bytes) -> list[int]:
    """The 128-bit values of `count` distinct v7 ids for the millisecond `unix_ms`,
    ascending in list order (`uuid7s` makes them UUIDs).

    `entropy`: at least ENTROPY_BYTES random bytes.
    """
    if count < 0:
        raise ValueError("count must not be negative")
    if not 0 <= unix_ms <= _MAX_MS:
        raise ValueError("unix_ms must fit in 48 bits")
    if len(entropy) < ENTROPY_BYTES:
        raise ValueError(f"need {ENTROPY_BYTES} bytes of entropy")
    start = int.from_bytes(entropy[:ENTROPY_BYTES], "big") & _DRAWN_MASK
    fixed = unix_ms << 80 | _VERSION | _VARIANT
    return [fixed | (value >> _RAND_B_BITS) << 64 | (value & _RAND_B_MASK)
            for value in range(start, start + count)]


def uuid7s(count: int, unix_ms: int, entropy: bytes) -> list[uuid.UUID]:
    """`count` distinct v7 ids for the millisecond `unix_ms`, ascending in list order.

    `entropy`: at least ENTROPY_BYTES random bytes.
    """
    return [uuid.UUID(int=value) for value in uuid7_ints(count, unix_ms, entropy)]


def uuid7_time_ms(value: uuid.UUID) -> int:
    """The Unix millisecond a v7 id was made in."""
    return value.int >> 80
