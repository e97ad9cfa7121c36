"""The simulator's report: an aligned text table with a legend for its columns, or JSON."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from celery_fleet.autoscale.simulate.model import Result
from celery_fleet.autoscale.simulate.workload import Workload


@dataclass(frozen=True)
class Column:
    header: str
    #: What the column holds, for the legend under the table (None: explained with the previous).
    legend: str | None
    cell: Callable[[Result, Result], str]  # (this row, the first row) -> text
    left: bool = False


def _ratio(row: Result, first: Result) -> str:
    return f"{row.worker_seconds / first.worker_seconds:.2f}x" if first.worker_seconds else "-"


COLUMNS: tuple[Column, ...] = (
    Column("policy", None, lambda r, _: r.label, left=True),
    Column("p50 s", "queue latency (publish to start) in seconds: median, 95th and 99th percentile, worst",
           lambda r, _: f"{r.latency_p50:.1f}"),
    Column("p95 s", None, lambda r, _: f"{r.latency_p95:.1f}"),
    Column("p99 s", None, lambda r, _: f"{r.latency_p99:.1f}"),
    Column("max s", None, lambda r, _: f"{r.latency_max:.1f}"),
    Column("worker-s", "worker-seconds: pods alive (starting, running or draining) x seconds - the cost",
           lambda r, _: f"{r.worker_seconds:,.0f}"),
    Column("cost", "worker-seconds relative to the first row", _ratio),
    Column("peak pods", "most pods at once", lambda r, _: f"{r.max_replicas:d}"),
    Column("busy removed", "busy workers scale-down picked (each drains its task first)",
           lambda r, _: f"{r.busy_removed:d}"),
    Column("interrupted", "tasks still running at the end of the drain window: cut and requeued",
           lambda r, _: f"{r.interrupted:d}"),
    Column("done", "tasks finished", lambda r, _: f"{r.completed:d}"),
    Column("last s", "when the last task finished, seconds from the start",
           lambda r, _: f"{r.last_finish_s:.0f}"),
)  # fmt: skip


def format_table(results: Sequence[Result]) -> str:
    """The table, then one legend line per column (group) saying what it holds."""
    if not results:
        return ""
    first = results[0]
    cells = [[c.cell(r, first) for c in COLUMNS] for r in results]
    widths = [max(len(c.header), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.ljust(w) if c.left else v.rjust(w) for v, w, c in zip(values, widths, COLUMNS, strict=True)
        ]
        return "  ".join(parts).rstrip()

    header = line([c.header for c in COLUMNS])
    rows = [header, "-" * len(header), *(line(row) for row in cells)]
    legend = ["", "columns:"]
    groups: list[tuple[list[str], str]] = []
    for c in COLUMNS:
        if c.legend is not None:
            groups.append(([c.header], c.legend))
        elif groups:
            groups[-1][0].append(c.header)
    name_width = max(len(", ".join(names)) for names, _ in groups)
    legend += [f"  {', '.join(names):<{name_width}}  {text}" for names, text in groups]
    return "\n".join(rows + legend)


def heading(
    workload: Workload, *, mean_task_seconds: float, pod_start_seconds: int, drain_window: float
) -> str:
    return (
        f"workload {workload.name}: {workload.total} tasks over {len(workload.arrivals)} s; "
        f"tasks lognormal mean {mean_task_seconds:g} s; pods ready {pod_start_seconds} s after asked; "
        f"drain window {drain_window:g} s"
    )


def json_report(workload: Workload, results: Sequence[Result], plot: str | None) -> dict[str, Any]:
    return {
        "workload": {"name": workload.name, "tasks": workload.total, "seconds": len(workload.arrivals)},
        "results": [r.summary() for r in results],
        "plot": plot,
    }
