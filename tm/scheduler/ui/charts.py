"""The overview's two charts: what they show, and the bars' geometry for an inline SVG.

* throughput: tasks finished per minute over the last CHART_MINUTES minutes, the failed
  ones stacked on top;
* backlog: tasks due but not yet sent to a worker, at the end of each minute.

`chart` is pure: one bar per minute, scaled so that the tallest stack fills the plot
(templates/_chart.html draws it). No JavaScript is involved.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tm.aio.pg import Database
from tm.db import dashboard

CHART_MINUTES = 15


def _hhmm(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%H:%M")


def chart(series: list[dashboard.MinuteCount], *, width: int = 300, height: int = 80
          ) -> dict[str, Any]:
    """Bar geometry for an inline SVG chart (templates/_chart.html): one bar per minute,
    `failed` stacked on top of `count`."""
    top = max([s.count + s.failed for s in series] + [1])
    plot = height
    step = width / max(len(series), 1)
    bars = []
    for i, s in enumerate(series):
        h_ok = plot * s.count / top
        h_bad = plot * s.failed / top
        bars.append({
            "x": round(i * step + 1, 2), "w": round(max(step - 2, 1), 2),
            "y_ok": round(plot - h_ok, 2), "h_ok": round(h_ok, 2),
            "y_bad": round(plot - h_ok - h_bad, 2), "h_bad": round(h_bad, 2),
            "label": _hhmm(s.minute), "count": s.count, "failed": s.failed,
        })
    return {
        "bars": bars, "width": width, "height": height, "plot": plot, "top": top,
        "total": sum(s.count for s in series), "total_failed": sum(s.failed for s in series),
        "last": series[-1].count if series else 0,
        "peak": max([s.count + s.failed for s in series] + [0]),
        "first_label": _hhmm(series[0].minute) if series else "",
        "last_label": _hhmm(series[-1].minute) if series else "",
    }


async def charts_context(db: Database) -> dict[str, Any]:
    """What templates/_charts.html needs: both charts and their time span."""
    finished = await dashboard.finished_per_minute(db, CHART_MINUTES)
    backlog = await dashboard.due_backlog(db, CHART_MINUTES)
    return {"throughput": chart(finished), "backlog": chart(backlog), "minutes": CHART_MINUTES}
