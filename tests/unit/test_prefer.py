"""The `Prefer` header (RFC 7240) as POST /tasks reads it: only `return=minimal` counts."""

from __future__ import annotations

import pytest

from tm.scheduler.http import prefers_minimal


@pytest.mark.parametrize(
    ("headers", "minimal"),
    [
        ([], False),
        (["return=minimal"], True),
        (["RETURN=minimal"], True),  # preference names are case-insensitive
        (['return="minimal"'], True),
        (["respond-async, return=minimal; foo=bar"], True),
        (["wait=10", " return = minimal "], True),  # one header per preference
        (["return=representation"], False),
        (["return=minimalist"], False),
        (["x-return=minimal"], False),
        (["respond-async; return=minimal"], False),  # a parameter of another preference
        ([""], False),
    ],
)
def test_prefers_minimal(headers: list[str], minimal: bool) -> None:
    assert prefers_minimal(headers) is minimal
