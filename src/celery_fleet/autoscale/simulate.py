"""Replay a workload through the scaling policy: ``celery-fleet simulate``.

A discrete-time model (1 s steps) of one worker group, run once per contender on the same
arrivals and the same task durations:

* **Arrivals**: a built-in profile (``steady``, ``burst``, ``diurnal``; seeded) or a CSV file
  with a header row and two columns, ``time_s,tasks``: at second ``time_s`` (a number >= 0,
  rows in any order, repeated times add up) ``tasks`` tasks (an integer >= 0) are published.
* **Tasks**: durations are lognormal with the given mean (``--mean-task-seconds``) and shape
  ``sigma`` (0.5 unless changed); one task at a time per worker (concurrency 1, prefetch 1).
* **Workers** are pods: ready ``--pod-start-seconds`` after the scaler asked for them, counted
  in worker-seconds from that moment (a starting pod costs what a running one does).
* **Metrics** are read every ``metric_interval`` seconds (a Prometheus scrape for an HPA on
  external metrics; KEDA reads Redis at each poll) and the scaler decides every
  ``sync_period_seconds`` of its policy; KEDA's activation from zero happens on its 30 s poll.
* **Scale-down** removes, in the ReplicaSet's order, pods that are still starting first, then
  - with ``controller.kubernetes.io/pod-deletion-cost`` kept up to date (celery-fleet) - idle
  workers before busy ones, or - without it (the plain KEDA/HPA contenders) - the newest
  pods whatever they are doing.  A removed busy worker drains: its task may finish within
  ``--drain-window`` seconds; if not it is *interrupted* and goes back to the queue.

Reported per contender: queue latency (publish to start) p50/p95/p99, worker-seconds, max
replicas, busy workers removed, tasks interrupted, and when the last task finished.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click

from celery_fleet.autoscale.policy import (
    KEDA_POLLING_INTERVAL_SECONDS,
    Autoscaler,
    QueueMetrics,
    ScalingPolicy,
    policy_from_hpa_defaults,
    policy_from_keda_defaults,
    recommended_policy,
)

PROFILES = ("steady", "burst", "diurnal")
#: Seconds the simulation goes on after the last arrival, at most, for the queue to drain.
MAX_TAIL_SECONDS = 3600


class WorkloadError(ValueError):
    """A workload file that cannot be read; the message names the line."""


@dataclass(frozen=True)
class Workload:
    name: str
    #: ``arrivals[t]`` tasks are published during second ``t``.
    arrivals: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.arrivals)


def _poisson(rng: random.Random, rate: float) -> int:
    # Knuth's method: fine for the small per-second rates used here.
    if rate <= 0:
        return 0
    limit, k, p = math.exp(-rate), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def builtin_profile(name: str, *, seed: int = 1, duration: int | None = None) -> Workload:
    """``steady``: ~1 task/s for 10 min.  ``burst``: a trickle (1 task/50 s) with two bursts of
    100 tasks over 10 s, 15 min apart (long enough for every scaler to go back down).
    ``diurnal``: a compressed day, 0.1 to 1.6 tasks/s along a sine over 30 min."""
    rng = random.Random(seed)
    if name == "steady":
        n = duration or 600
        return Workload(name, tuple(_poisson(rng, 1.0) for _ in range(n)))
    if name == "burst":
        n = duration or 1800
        arrivals = [_poisson(rng, 0.02) for _ in range(n)]
        for start in (60, 960):
            for t in range(start, min(start + 10, n)):
                arrivals[t] += 10
        return Workload(name, tuple(arrivals))
    if name == "diurnal":
        n = duration or 1800
        rates = [0.1 + 1.5 * (1 - math.cos(2 * math.pi * t / n)) / 2 for t in range(n)]
        return Workload(name, tuple(_poisson(rng, r) for r in rates))
    raise WorkloadError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")


def load_workload_csv(path: Path) -> Workload:
    """Read ``time_s,tasks`` rows (header required) into 1 s bins."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkloadError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    reader = csv.DictReader(text.splitlines())
    fields = [f.strip() for f in reader.fieldnames or []]
    if fields[:2] != ["time_s", "tasks"]:
        raise WorkloadError(
            f"{path}: the header must be 'time_s,tasks', found {','.join(fields) or 'nothing'}"
        )
    bins: dict[int, int] = {}
    for line, row in enumerate(reader, start=2):
        raw_t, raw_n = (row.get("time_s") or "").strip(), (row.get("tasks") or "").strip()
        if not raw_t and not raw_n:
            continue
        try:
            t, n = float(raw_t), int(raw_n)
        except ValueError:
            raise WorkloadError(
                f"{path}:{line}: expected a number and an integer, got {raw_t!r}, {raw_n!r}"
            ) from None
        if not math.isfinite(t) or t < 0 or n < 0:
            raise WorkloadError(f"{path}:{line}: time_s and tasks must be >= 0, got {raw_t!r}, {raw_n!r}")
        if t > 7 * 24 * 3600:
            raise WorkloadError(f"{path}:{line}: time_s {t:g} is more than a week; use seconds")
        bins[int(t)] = bins.get(int(t), 0) + n
    if not bins or not sum(bins.values()):
        raise WorkloadError(f"{path}: no tasks in the workload")
    arrivals = [0] * (max(bins) + 1)
    for t, n in bins.items():
        arrivals[t] = n
    return Workload(path.stem, tuple(arrivals))


@dataclass(frozen=True)
class TaskModel:
    mean_seconds: float = 5.0
    sigma: float = 0.5

    def durations(self, seed: int) -> Iterator[float]:
        """The n-th task started gets the n-th duration: the same for every contender."""
        rng = random.Random(seed + 7919)
        mu = math.log(self.mean_seconds) - self.sigma**2 / 2  # lognormal with this mean
        while True:
            yield max(0.05, rng.lognormvariate(mu, self.sigma))


@dataclass(frozen=True)
class Contender:
    """A policy plus how it is wired in the cluster."""

    label: str
    policy: ScalingPolicy
    #: Seconds between metric samples the scaler sees (0: read fresh at every decision).
    metric_interval: float
    #: Seconds between checks for activation from zero (KEDA's polling interval).
    activation_interval: float
    #: Pod-deletion-cost kept up to date: idle workers are removed first.
    idle_first: bool


def default_contenders(ours: ScalingPolicy) -> list[Contender]:
    keda = policy_from_keda_defaults(max_replicas=ours.max_replicas)
    hpa = policy_from_hpa_defaults(ours.backlog_per_worker, max_replicas=ours.max_replicas)
    return [
        Contender("celery-fleet", ours, ours.sync_period_seconds, ours.sync_period_seconds, True),
        # HPA sync every 15 s on the KEDA metrics server (fresh list length); activation on the 30 s poll.
        Contender(
            "keda-defaults",
            replace(keda, sync_period_seconds=15.0),
            0.0,
            KEDA_POLLING_INTERVAL_SECONDS,
            False,
        ),
        # A plain HPA on the exporter's backlog through a Prometheus adapter (15 s scrape), min 1.
        Contender("hpa-defaults", hpa, 15.0, hpa.sync_period_seconds, False),
    ]


@dataclass
class _Pod:
    created: int
    ready_at: int
    task: tuple[float, float, float] | None = None  # (published, started, ends)
    draining_until: float | None = None


@dataclass
class Series:
    t: list[int] = field(default_factory=list)
    backlog: list[int] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    oldest_age: list[float] = field(default_factory=list)


@dataclass
class Result:
    label: str
    policy: dict[str, Any]
    tasks: int
    completed: int
    latency_p50: float
    latency_p95: float
    latency_p99: float
    latency_max: float
    worker_seconds: float
    max_replicas: int
    busy_removed: int
    interrupted: int
    last_finish_s: float
    series: Series

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("series", "policy")}
        out["policy"] = self.policy
        return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def simulate(
    workload: Workload,
    contender: Contender,
    *,
    tasks: TaskModel | None = None,
    pod_start_seconds: int = 10,
    drain_window: float = 30.0,
    seed: int = 1,
) -> Result:
    model = tasks or TaskModel()
    policy = contender.policy
    durations = model.durations(seed)
    rng = random.Random(seed + 104729)
    scaler = Autoscaler(policy)
    queue: deque[float] = deque()
    pods: list[_Pod] = [_Pod(0, 0) for _ in range(policy.min_replicas)]
    latencies: list[float] = []
    series = Series()
    worker_seconds = 0.0
    busy_removed = interrupted = completed = max_replicas = 0
    last_finish = 0.0
    sample = QueueMetrics(waiting=0)
    sync = max(1, round(policy.sync_period_seconds))
    activation = max(1, round(contender.activation_interval))
    scrape = round(contender.metric_interval)
    end = len(workload.arrivals) + MAX_TAIL_SECONDS
    t = 0
    while t < end:
        if t < len(workload.arrivals):
            queue.extend(sorted(t + rng.random() for _ in range(workload.arrivals[t])))
        elif not queue and all(p.task is None for p in pods):
            break
        # Finish tasks (and drains) that end within this second.
        for pod in pods:
            if pod.task is not None and pod.task[2] <= t + 1:
                completed += 1
                last_finish = max(last_finish, pod.task[2])
                pod.task = None
            if pod.draining_until is not None and pod.task is not None and pod.draining_until <= t + 1:
                interrupted += 1  # cut at the end of the drain window: back to the queue
                queue.appendleft(pod.task[0])
                pod.task = None
        pods = [p for p in pods if not (p.draining_until is not None and p.task is None)]
        # Idle ready workers take the oldest waiting tasks.
        for pod in pods:
            if (
                pod.draining_until is None
                and pod.task is None
                and pod.ready_at <= t
                and queue
                and queue[0] < t + 1
            ):
                published = queue.popleft()
                start = max(float(t), published)
                latencies.append(start - published)
                pod.task = (published, start, start + next(durations))
        active_pods = [p for p in pods if p.draining_until is None]
        held = sum(1 for p in active_pods if p.task is not None)
        waiting = len(queue)  # everything queued was published by the end of this second
        oldest = max(0.0, t + 1 - queue[0]) if queue else 0.0
        if scrape <= 0 or t % scrape == 0:
            sample = QueueMetrics(waiting=waiting, held=held, oldest_age_seconds=oldest)
        current = len(active_pods)
        due = t % (activation if current == 0 else sync) == 0
        if due:
            desired = scaler.decide(float(t), current, sample).desired
            if desired > current:
                pods.extend(_Pod(t, t + pod_start_seconds) for _ in range(desired - current))
            elif desired < current:
                for pod in _removal_order(active_pods, t, contender.idle_first)[: current - desired]:
                    if pod.task is None:
                        pods.remove(pod)
                    else:
                        busy_removed += 1
                        pod.draining_until = t + drain_window
        replicas = sum(1 for p in pods if p.draining_until is None)
        max_replicas = max(max_replicas, replicas)
        worker_seconds += len(pods)
        series.t.append(t)
        series.backlog.append(waiting + held)
        series.replicas.append(replicas)
        series.oldest_age.append(oldest)
        t += 1
    return Result(
        label=contender.label,
        policy=policy.as_dict(),
        tasks=workload.total,
        completed=completed,
        latency_p50=percentile(latencies, 50),
        latency_p95=percentile(latencies, 95),
        latency_p99=percentile(latencies, 99),
        latency_max=max(latencies, default=0.0),
        worker_seconds=worker_seconds,
        max_replicas=max_replicas,
        busy_removed=busy_removed,
        interrupted=interrupted,
        last_finish_s=last_finish,
        series=series,
    )


def _removal_order(pods: list[_Pod], t: int, idle_first: bool) -> list[_Pod]:
    """The ReplicaSet's order: not-ready pods first; then by deletion cost (busy = costly) when it
    is maintained, else the newest first."""

    def key(pod: _Pod) -> tuple[int, int, int]:
        not_ready = 0 if pod.ready_at > t else 1
        cost = (0 if pod.task is None else 1) if idle_first else 0
        return (not_ready, cost, -pod.created)

    return sorted(pods, key=key)


def compare(
    workload: Workload,
    ours: ScalingPolicy,
    *,
    tasks: TaskModel | None = None,
    pod_start_seconds: int = 10,
    drain_window: float = 30.0,
    seed: int = 1,
) -> list[Result]:
    return [
        simulate(
            workload,
            c,
            tasks=tasks,
            pod_start_seconds=pod_start_seconds,
            drain_window=drain_window,
            seed=seed,
        )
        for c in default_contenders(ours)
    ]


def format_table(results: Sequence[Result]) -> str:
    header = (
        f"{'contender':<14} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} {'max s':>7} {'worker-s':>9} "
        f"{'max pods':>8} {'busy rm':>7} {'interr.':>7} {'done':>6} {'last s':>7}"
    )
    rows = [header, "-" * len(header)]
    for r in results:
        rows.append(
            f"{r.label:<14} {r.latency_p50:>7.1f} {r.latency_p95:>7.1f} {r.latency_p99:>7.1f} "
            f"{r.latency_max:>7.1f} "
            f"{r.worker_seconds:>9.0f} {r.max_replicas:>8d} {r.busy_removed:>7d} {r.interrupted:>7d} "
            f"{r.completed:>6d} {r.last_finish_s:>7.0f}"
        )
    return "\n".join(rows)


def plot(results: Sequence[Result], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    for r in results:
        axes[0].plot(r.series.t, r.series.backlog, label=r.label, linewidth=1)
        axes[1].step(r.series.t, r.series.replicas, where="post", label=r.label, linewidth=1)
        axes[2].plot(r.series.t, r.series.oldest_age, label=r.label, linewidth=1)
    axes[0].set_ylabel("backlog (waiting + running)")
    axes[1].set_ylabel("replicas")
    axes[2].set_ylabel("oldest waiting (s)")
    axes[2].set_xlabel("time (s)")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
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
    try:
        workload = (
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
        plot(
            results,
            plot_path,
            f"workload {workload.name}: {workload.total} tasks, mean {mean_task_seconds:g} s",
        )
    if as_json:
        report = {
            "workload": {"name": workload.name, "tasks": workload.total, "seconds": len(workload.arrivals)},
            "results": [r.summary() for r in results],
            "plot": str(plot_path) if plot_path else None,
        }
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(
        f"workload {workload.name}: {workload.total} tasks over {len(workload.arrivals)} s; "
        f"tasks lognormal mean {mean_task_seconds:g} s; pods ready {pod_start_seconds} s after asked; "
        f"drain window {drain_window:g} s"
    )
    click.echo(format_table(results))
    if plot_path is not None:
        click.echo(f"plot: {plot_path}")
