"""Pictures of autoscaling runs: the simulator's and ``bench/autoscale.py``'s.

Left, over time, one line per policy: backlog, workers, the oldest message's age (when
known) and the worker-seconds spent so far.  Right, the totals that carry the point (the
worker-seconds each policy spent, and a latency figure), as bars.  Each policy keeps one
colour and one dash pattern everywhere; worker counts are integers and often equal, so the
step lines are drawn a little apart to stay visible.

matplotlib is an optional extra (``celery-fleet[plot]``): :func:`require_matplotlib` says so
in one line before any work is done.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLOT_EXTRA_HINT = "pip install 'celery-fleet[plot]'"

#: (colour, dash pattern, line width) per policy, in the order they are given.
STYLES: tuple[tuple[str, Any, float], ...] = (
    ("#1f5fbf", "-", 2.2),
    ("#e07b00", "--", 1.7),
    ("#2a9d3a", ":", 2.2),
    ("#8e44ad", "-.", 1.7),
    ("#555555", (0, (5, 1, 1, 1)), 1.7),
)
#: Vertical gap between equal worker-count step lines of neighbouring policies.
STEP_SPREAD = 0.12


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


@dataclass(frozen=True)
class Timeline:
    """One policy's run, sampled over time."""

    label: str
    t: Sequence[float]
    backlog: Sequence[float]
    workers: Sequence[int]
    #: Worker-seconds spent up to each sample (cumulative).
    worker_seconds: Sequence[float]
    oldest_age: Sequence[float] | None = None


@dataclass(frozen=True)
class Totals:
    """One bar panel: a figure per policy label."""

    title: str
    values: Mapping[str, float]
    #: How a value is written at the end of its bar.
    fmt: str = "{:,.0f}"


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(
            f"plotting needs matplotlib, which is not installed: {PLOT_EXTRA_HINT}"
        ) from None


def plot_timelines(
    timelines: Sequence[Timeline],
    path: Path,
    *,
    title: str,
    totals: Sequence[Totals] = (),
    time_label: str = "time (s)",
    workers_label: str = "workers",
) -> None:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {tl.label: STYLES[i % len(STYLES)] for i, tl in enumerate(timelines)}
    with_age = any(tl.oldest_age is not None for tl in timelines)
    rows = 4 if with_age else 3
    fig = plt.figure(figsize=(14, 2.3 * rows + 1.2))
    grid = fig.add_gridspec(rows, 2, width_ratios=(3.2, 1), hspace=0.38, wspace=0.28)
    first = fig.add_subplot(grid[0, 0])
    left = [first] + [fig.add_subplot(grid[i, 0], sharex=first) for i in range(1, rows)]
    backlog_ax, workers_ax = left[0], left[1]
    age_ax = left[2] if with_age else None
    cost_ax = left[-1]
    spread = [(i - (len(timelines) - 1) / 2) * STEP_SPREAD for i in range(len(timelines))]

    for tl, offset in zip(timelines, spread, strict=True):
        colour, dash, width = style[tl.label]
        kw: dict[str, Any] = {"color": colour, "linestyle": dash, "linewidth": width, "label": tl.label}
        backlog_ax.plot(tl.t, tl.backlog, **kw)
        workers_ax.step(tl.t, [w + offset for w in tl.workers], where="post", **kw)
        if age_ax is not None and tl.oldest_age is not None:
            age_ax.plot(tl.t, tl.oldest_age, **kw)
        cost_ax.plot(tl.t, tl.worker_seconds, **kw)  # the totals are on the bars, not here

    backlog_ax.set_ylabel("backlog\n(waiting + running)")
    workers_ax.set_ylabel(f"{workers_label}\n(lines ±{STEP_SPREAD:g} apart)")
    if age_ax is not None:
        age_ax.set_ylabel("oldest waiting\nmessage (s)")
    cost_ax.set_ylabel("worker-seconds\nspent so far")
    cost_ax.set_xlabel(time_label)
    for ax in left:
        ax.grid(True, alpha=0.3)
    for ax in left[:-1]:
        ax.tick_params(labelbottom=False)
    backlog_ax.legend(loc="upper right", fontsize=9)

    right = grid[:, 1].subgridspec(max(len(totals), 1), 1, hspace=0.5)  # equal shares on the right
    for i, panel in enumerate(totals):
        ax = fig.add_subplot(right[i, 0])
        labels = [tl.label for tl in timelines if tl.label in panel.values]
        values = [panel.values[label] for label in labels]
        bars = ax.barh(labels, values, color=[style[label][0] for label in labels])
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(
                " " + panel.fmt.format(value),
                (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                va="center",
                fontsize=9,
            )
        ax.invert_yaxis()
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlim(0, max(values, default=1.0) * 1.35 or 1.0)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(True, axis="x", alpha=0.3)

    fig.suptitle(title)
    fig.subplots_adjust(left=0.08, right=0.97, top=0.93, bottom=0.07)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
