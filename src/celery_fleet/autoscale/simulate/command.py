"""``celery-fleet simulate``: options in, workload to the model, results to the report and plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import click

from celery_fleet.autoscale.policy import recommended_policy
from celery_fleet.autoscale.simulate.model import Result, compare
from celery_fleet.autoscale.simulate.plot import (
    PlotUnavailable,
    Timeline,
    Totals,
    plot_timelines,
    require_matplotlib,
)
from celery_fleet.autoscale.simulate.report import format_table, heading, json_report
from celery_fleet.autoscale.simulate.workload import (
    PROFILES,
    TaskModel,
    Workload,
    WorkloadError,
    builtin_profile,
    load_workload_csv,
)


def plot_results(results: Sequence[Result], path: Path, title: str) -> None:
    plot_timelines(
        [
            Timeline(
                r.label,
                r.series.t,
                r.series.backlog,
                r.series.replicas,
                r.series.worker_seconds,
                r.series.oldest_age,
            )
            for r in results
        ],
        path,
        title=title,
        totals=[
            Totals("worker-seconds (the cost)", {r.label: r.worker_seconds for r in results}),
            Totals("queue latency p95 (s)", {r.label: r.latency_p95 for r in results}, fmt="{:.1f} s"),
        ],
        workers_label="replicas",
    )


@click.command()
@click.option(
    "--profile", type=click.Choice(PROFILES), default=None, help="Built-in workload (default: burst)."
)
@click.option(
    "--workload",
    "workload_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="CSV workload: header 'time_s,tasks', one row per publish time.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--backlog-per-worker", type=click.FloatRange(min=0.01), default=2.0, show_default=True)
@click.option(
    "--latency-target",
    type=click.FloatRange(min=0.0),
    default=30.0,
    show_default=True,
    help="Seconds; 0: off.",
)
@click.option("--min-replicas", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--max-replicas", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--mean-task-seconds", type=click.FloatRange(min=0.05), default=5.0, show_default=True)
@click.option("--task-sigma", type=click.FloatRange(min=0.0, max=3.0), default=0.5, show_default=True)
@click.option("--pod-start-seconds", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--drain-window", type=click.FloatRange(min=0.0), default=30.0, show_default=True)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a PNG (needs the plot extra: pip install 'celery-fleet[plot]').",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def simulate_command(
    profile: str | None,
    workload_file: Path | None,
    seed: int,
    backlog_per_worker: float,
    latency_target: float,
    min_replicas: int,
    max_replicas: int,
    mean_task_seconds: float,
    task_sigma: float,
    pod_start_seconds: int,
    drain_window: float,
    plot_path: Path | None,
    as_json: bool,
) -> None:
    """Replay a workload through celery-fleet's policy and KEDA's and HPA's defaults."""
    if profile and workload_file:
        raise click.UsageError("give --profile or --workload, not both")
    if min_replicas > max_replicas:
        raise click.UsageError(f"--min-replicas ({min_replicas}) is above --max-replicas ({max_replicas})")
    if plot_path is not None:
        try:
            require_matplotlib()
        except PlotUnavailable as exc:
            raise click.ClickException(f"--plot: {exc}") from None
    try:
        workload: Workload = (
            load_workload_csv(workload_file)
            if workload_file
            else builtin_profile(profile or "burst", seed=seed)
        )
    except WorkloadError as exc:
        raise click.UsageError(str(exc)) from exc
    ours = recommended_policy(
        backlog_per_worker,
        oldest_age_target_seconds=latency_target or None,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
    )
    results = compare(
        workload,
        ours,
        tasks=TaskModel(mean_task_seconds, task_sigma),
        pod_start_seconds=pod_start_seconds,
        drain_window=drain_window,
        seed=seed,
    )
    if plot_path is not None:
        plot_results(
            results,
            plot_path,
            f"workload {workload.name}: {workload.total} tasks, mean {mean_task_seconds:g} s",
        )
    if as_json:
        click.echo(
            json.dumps(json_report(workload, results, str(plot_path) if plot_path else None), indent=2)
        )
        return
    click.echo(
        heading(
            workload,
            mean_task_seconds=mean_task_seconds,
            pod_start_seconds=pod_start_seconds,
            drain_window=drain_window,
        )
    )
    click.echo(format_table(results))
    if plot_path is not None:
        click.echo(f"plot: {plot_path}")
