"""What a benchmark run is asked to do (BenchPlan), what it found (BenchResult), how that
is shown (render) and the progress bar. Shared by both modes: a cluster the bench starts
itself (tm/bench/local.py) and a running one reached over its HTTP API (tm/bench/remote.py).
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from tm.core.timefmt import format_time

NOT_MEASURED_URL = "not measured (--url)"


@dataclass(frozen=True)
class BenchPlan:
    ingest_seconds: float = 5.0
    ingest_concurrency: int = 16
    # `tm scheduler --processes` of the bench's own cluster (one is CPU-bound in the HTTP
    # stack below what the database takes); not used with --url.
    scheduler_processes: int = 2
    batch_size: int = 10_000
    batches: int = 12
    # Batch ingest is measured from one client, then from this many at once.
    batch_clients: int = 4
    drain_tasks: int = 50_000
    drain_workers: tuple[int, ...] = (1, 3, 6)
    latency_rate: int = 200
    latency_seconds: float = 20.0
    latency_workers: int = 3
    history_rows: int = 1_000_000
    backlog_tasks: int = 1_000_000
    backlog_seconds: float = 15.0

    @classmethod
    def quick(cls) -> BenchPlan:
        return cls(
            ingest_seconds=1.0,
            batch_size=1000,
            batches=2,
            drain_tasks=2000,
            drain_workers=(2,),
            latency_rate=50,
            latency_seconds=2.0,
            history_rows=20_000,
            backlog_tasks=20_000,
            backlog_seconds=2.0,
        )


@dataclass
class BenchResult:
    plan: dict[str, Any]
    started_at: str
    # "own" (a cluster started by the bench on --database-url's server), "embedded" (the
    # same on a private PostgreSQL) or "url" (a running cluster, over its HTTP API only).
    mode: str = "own"
    # The scheduler measured in "url" mode.
    target: str | None = None
    # Phases not run, with the reason (e.g. "not measured (--url)").
    skipped: dict[str, str] = field(default_factory=dict)
    ingest_single_rps: float = 0.0
    ingest_batch_tps: float = 0.0  # one client
    ingest_batch_concurrent_tps: float = 0.0  # plan.batch_clients clients
    # Workers started by the bench -> tasks/s; in "url" mode one entry, "cluster": the
    # running cluster's own workers (`cluster_workers` of them were listed).
    drain_tps: dict[str, float] = field(default_factory=dict)
    cluster_workers: int | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    history_rows: int = 0
    history_drain_tps: float = 0.0
    history_latency_ms: dict[str, float] = field(default_factory=dict)
    # A due backlog of `backlog_tasks` tasks, `latency_workers` workers working on it:
    # tasks completed per second, and the peak RSS of each role while it lasted.
    backlog_tasks: int = 0
    backlog_drain_tps: float = 0.0
    backlog_coordinator_rss_mb: float = 0.0
    backlog_peak_rss_mb: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    # "url" mode: tasks of the ingest phases cancelled afterwards.
    cancelled_after_ingest: int = 0


# Fields of each phase that can be skipped: null in the JSON when it was.
PHASE_FIELDS = {
    "drain": ("drain_tps",),
    "latency": ("latency_ms",),
    "history": ("history_rows", "history_drain_tps", "history_latency_ms"),
    "backlog": ("backlog_tasks", "backlog_drain_tps", "backlog_coordinator_rss_mb",
                "backlog_peak_rss_mb"),
    "peak_rss": ("peak_rss_mb",),
}


def as_json(result: BenchResult) -> dict[str, Any]:
    """The result for --json: every field, those of skipped phases null (not 0)."""
    document = asdict(result)
    for phase in result.skipped:
        for name in PHASE_FIELDS.get(phase, ()):
            document[name] = None
    return document


def new_result(plan: BenchPlan) -> BenchResult:
    """An empty result of a run of `plan` starting now."""
    return BenchResult(plan=asdict(plan), started_at=format_time(datetime.now(UTC)) or "")


class Progress:
    """One line per step on stderr; redrawn in place on a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def step(self, text: str, done: float | None = None) -> None:
        bar = ""
        if done is not None:
            filled = int(max(0.0, min(1.0, done)) * 30)
            bar = f" [{'#' * filled}{'.' * (30 - filled)}] {done * 100:5.1f}%"
        if self.tty:
            sys.stderr.write(f"\r\033[K{text}{bar}")
        elif done is None or done >= 1.0:
            sys.stderr.write(f"{text}{bar}\n")
        sys.stderr.flush()

    def done(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
        sys.stderr.write(f"{text}\n")
        sys.stderr.flush()


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return {
        "p50": pick(0.50),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "max": ordered[-1],
        "count": float(len(ordered)),
    }


def render(result: BenchResult) -> str:
    """The figures as a Markdown table (what README's benchmark section shows)."""
    plan = result.plan

    def ms(figures: dict[str, float]) -> str:
        if not figures:
            return "-"
        return " / ".join(f"{figures[k]:.1f}" for k in ("p50", "p95", "p99", "max"))

    def skipped(phase: str) -> str | None:
        return result.skipped.get(phase)

    processes = ""
    if result.mode != "url" and plan.get("scheduler_processes", 1) > 1:
        processes = f", {plan['scheduler_processes']} scheduler processes"
    lines = [
        "| figure | value |",
        "|---|---|",
        f"| single-task ingest, c={plan['ingest_concurrency']}{processes} | "
        f"{result.ingest_single_rps:,.0f} req/s |",
        f"| batch ingest ({plan['batch_size']:,}/request), 1 client | "
        f"{result.ingest_batch_tps:,.0f} tasks/s |",
        f"| batch ingest ({plan['batch_size']:,}/request), {plan['batch_clients']} clients"
        f"{processes} | {result.ingest_batch_concurrent_tps:,.0f} tasks/s |",
    ]
    for workers, tps in result.drain_tps.items():
        if workers == "cluster":
            who = f"the cluster's {result.cluster_workers or 0} workers"
        else:
            who = f"{workers} workers"
        lines.append(f"| drain {plan['drain_tasks']:,} tasks, {who} | {tps:,.0f} tasks/s |")
    if reason := skipped("drain_by_worker_count"):
        counts = " / ".join(str(n) for n in plan["drain_workers"])
        lines.append(f"| drain {plan['drain_tasks']:,} tasks, {counts} workers | {reason} |")
    if reason := skipped("drain"):
        lines.append(f"| drain {plan['drain_tasks']:,} tasks | {reason} |")
    lines.append(
        f"| due→started ms p50/p95/p99/max ({plan['latency_rate']}/s) | "
        f"{skipped('latency') or ms(result.latency_ms)} |"
    )
    if reason := skipped("history"):
        lines.append(
            f"| drain, {plan['latency_workers']} workers, with {plan['history_rows']:,} "
            f"finished | {reason} |"
        )
        lines.append(f"| due→started ms with {plan['history_rows']:,} finished | {reason} |")
    else:
        lines.append(
            f"| drain, {plan['latency_workers']} workers, with "
            f"{result.history_rows:,} finished | {result.history_drain_tps:,.0f} tasks/s |"
        )
        lines.append(
            f"| due→started ms with {result.history_rows:,} finished | "
            f"{ms(result.history_latency_ms)} |"
        )
    backlog = f"{plan['backlog_tasks']:,}-task due backlog"
    if reason := skipped("backlog"):
        lines.append(f"| drain, {plan['latency_workers']} workers, {backlog} | {reason} |")
        lines.append(f"| peak RSS, coordinator, {backlog} | {reason} |")
    else:
        lines.append(
            f"| drain, {plan['latency_workers']} workers, {backlog} | "
            f"{result.backlog_drain_tps:,.0f} tasks/s |"
        )
        lines.append(
            f"| peak RSS, coordinator, {backlog} | {result.backlog_coordinator_rss_mb:.0f} MB |"
        )
    if reason := skipped("peak_rss"):
        lines.append(f"| peak RSS | {reason} |")
    for role, mb in sorted(result.peak_rss_mb.items()):
        lines.append(f"| peak RSS, {role} | {mb:.0f} MB |")
    early = result.latency_ms.get("started_early", 0) + result.history_latency_ms.get(
        "started_early", 0
    )
    lines.append(f"| tasks started before due | {early:.0f} |")
    if result.errors:
        lines.append(f"| requests answered with an error | {result.errors:,} |")
    return "\n".join(lines)
