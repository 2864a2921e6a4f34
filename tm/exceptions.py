"""Finding one exception in what a trio nursery raised (perhaps nested in groups)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

E = TypeVar("E", bound=BaseException)


def find_exception(
    exc: BaseException, kind: type[E], where: Callable[[E], bool] | None = None
) -> E | None:
    """The first exception of `kind` (for which `where` holds) in `exc`: itself, or inside
    exception groups."""
    if isinstance(exc, kind) and (where is None or where(exc)):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_exception(inner, kind, where)
            if found is not None:
                return found
    return None
