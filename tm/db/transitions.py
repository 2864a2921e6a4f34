"""The lifecycle table (tm.core.lifecycle.TRANSITIONS) rendered as SQL.

Every statement that moves a task between statuses — claim and hand-back (tm/db/dispatch.py),
reports (tm/db/reports.py), recovery (tm/db/recovery.py), cancel (tm/db/tasks.py) — takes
from here which statuses it applies to, where it takes the task, and the budget that decides
between a retry and a failure. What those statements write beside the status (times,
results, leases) is theirs, keyed by the predicates below ("this row ends in failed").

Fragments are plain SQL text built once at import, over a row alias (`t`) and, for the
report statement, a column holding each row's `ReportKind` as an integer (`u.kind`).
Predicates come back parenthesised when they combine terms, so they can be embedded
anywhere a condition can. Statuses are listed in `Status` order, so the text of a guard is
stable (the partial indexes' predicates in schema/ spell them the same way).
"""

from __future__ import annotations

from collections.abc import Iterable

from tm.core.lifecycle import TRANSITIONS, Budget, Event
from tm.core.reports import ReportKind
from tm.core.tasks import Status


def literal(text: str) -> str:
    """`text` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _ordered(statuses: Iterable[Status]) -> list[Status]:
    wanted = set(statuses)
    return [s for s in Status if s in wanted]


def status_in(column: str, statuses: Iterable[Status]) -> str:
    """`column = 'x'` or `column IN ('x', 'y')`."""
    ordered = _ordered(statuses)
    if len(ordered) == 1:
        return f"{column} = {literal(ordered[0])}"
    return f"{column} IN ({', '.join(literal(s) for s in ordered)})"


def _array(statuses: Iterable[Status]) -> str:
    return f"ARRAY[{', '.join(literal(s) for s in _ordered(statuses))}]"


def budget_left(budget: Budget, row: str = "t") -> str:
    """The row still has `budget` (tm.core.lifecycle.budget_left)."""
    return f"{row}.{budget.counter} + 1 < {row}.{budget.limit} AND NOT {row}.at_most_once"


def spend(budget: Budget, row: str = "t") -> str:
    return f"{row}.{budget.counter} + 1"


def exhausted_error(budget: Budget, otherwise: str) -> str:
    """The error of a row that ran out of `budget`: the budget's own, else `otherwise`."""
    return literal(budget.error) if budget.error is not None else otherwise


def accepts(event: Event, column: str = "t.status") -> str:
    """The statuses `event` applies to, as a guard."""
    return status_in(column, TRANSITIONS[event].accepts)


def target(event: Event, row: str = "t") -> str:
    """The status `event` takes a row to (it applies: see `accepts`)."""
    transition = TRANSITIONS[event]
    if transition.budget is None:
        return literal(transition.to)
    return (f"CASE WHEN {budget_left(transition.budget, row)} THEN {literal(transition.to)} "
            f"ELSE {literal(Status.FAILED)} END")


def _condition(event: Event, statuses: frozenset[Status], row: str) -> str | None:
    """When `event` (applied) ends in one of `statuses`: None never, "" always."""
    transition = TRANSITIONS[event]
    hits = transition.outcomes & statuses
    if not hits:
        return None
    if transition.budget is None or hits == transition.outcomes:
        return ""
    left = budget_left(transition.budget, row)
    return left if transition.to in hits else f"NOT ({left})"


def ends_in(event: Event, *statuses: Status, row: str = "t") -> str:
    """A condition: `event`, applied to this row, leaves it in one of `statuses`."""
    condition = _condition(event, frozenset(statuses), row)
    if condition is None:
        return "FALSE"
    return condition or "TRUE"


class ByKind:
    """Fragments for a statement with one report per row: `kind` holds its ReportKind."""

    def __init__(self, kind: str = "u.kind", row: str = "t",
                 kinds: Iterable[ReportKind] = ReportKind) -> None:
        self.kind = kind
        self.row = row
        self.kinds = list(kinds)

    def __repr__(self) -> str:
        return f"<ByKind {self.kind} over {self.row}: {[k.name for k in self.kinds]}>"

    def is_(self, *kinds: ReportKind) -> str:
        """`u.kind = 3` or `u.kind IN (2, 3)`."""
        numbers = sorted(int(k) for k in kinds)
        if len(numbers) == 1:
            return f"{self.kind} = {numbers[0]}"
        return f"{self.kind} IN ({', '.join(map(str, numbers))})"

    def status(self) -> str:
        """The status each kind takes the row to."""
        arms = "".join(
            f"\n        WHEN {int(k)} THEN {target(k, self.row)}" for k in self.kinds
        )
        return f"CASE {self.kind}{arms}\n    END"

    def fits(self) -> str:
        """The row's status is one the row's kind applies to."""
        groups: dict[frozenset[Status], list[ReportKind]] = {}
        for k in self.kinds:
            groups.setdefault(TRANSITIONS[k].accepts, []).append(k)
        column = f"{self.row}.status"
        if len(groups) == 1:
            return status_in(column, next(iter(groups)))
        *arms, last = groups.items()
        whens = " ".join(f"WHEN {self.is_(*kinds)} THEN {_array(statuses)}"
                         for statuses, kinds in arms)
        return f"{column} = ANY(CASE {whens} ELSE {_array(last[0])} END)"

    def ends_in(self, *statuses: Status) -> str:
        """The row's kind, applied, leaves it in one of `statuses`."""
        wanted = frozenset(statuses)
        always: list[ReportKind] = []
        terms: list[str] = []
        for k in self.kinds:
            condition = _condition(k, wanted, self.row)
            if condition == "":
                always.append(k)
            elif condition is not None:
                terms.append(f"({self.is_(k)} AND {condition})")
        if always:
            terms.insert(0, self.is_(*always))
        if not terms:
            return "FALSE"
        return terms[0] if len(terms) == 1 else f"({' OR '.join(terms)})"

    def spend(self, budget: Budget) -> str:
        """The counter of `budget`, grown by one for the kinds that spend it."""
        spenders = [k for k in self.kinds if TRANSITIONS[k].budget == budget]
        return f"{self.row}.{budget.counter} + ({self.is_(*spenders)})::int"
