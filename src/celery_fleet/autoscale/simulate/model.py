"""The model: one worker group and its scaler in 1 s steps, run once per contender on the same
arrivals and the same task durations.

* **Workers** are pods with one task slot each (concurrency 1, prefetch 1): ready
  ``pod_start_seconds`` after the scaler asked for them, counted in worker-seconds from that
  moment (a starting pod costs what a running one does) until they are gone.
* **Metrics** are read every ``metric_interval`` seconds (a Prometheus scrape for an HPA on
  external metrics; KEDA reads Redis at each poll) and the scaler decides every
  ``sync_period_seconds`` of its policy; KEDA's activation from zero happens on its poll.  The
  scaler knows which pods are ready (the HPA reads them from the API at each sync).
* **Scale-down** removes, in the ReplicaSet's order, pods that are still starting first, then
  - with ``controller.kubernetes.io/pod-deletion-cost`` kept up to date (celery-fleet) - idle
  workers before busy ones, or - without it (the plain KEDA/HPA contenders) - the newest
  pods whatever they are doing.  A removed busy worker drains: its task may finish within
  ``drain_window`` seconds; if not it is *interrupted* and goes back to the queue.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from celery_fleet.autoscale.policy import (
    KEDA_POLLING_INTERVAL_SECONDS,
    Autoscaler,
    QueueMetrics,
    ScalingPolicy,
    policy_from_hpa_defaults,
    policy_from_keda_defaults,
)
from celery_fleet.autoscale.simulate.workload import TaskModel, Workload

#: Seconds the simulation goes on after the last arrival, at most, for the queue to drain.
MAX_TAIL_SECONDS = 3600


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
    """Per second: backlog (waiting + running), replicas (pods not draining), the oldest
    waiting message's age, and worker-seconds spent so far."""

    t: list[int] = field(default_factory=list)
    backlog: list[int] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    oldest_age: list[float] = field(default_factory=list)
    worker_seconds: list[float] = field(default_factory=list)


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
            ready = sum(1 for p in active_pods if p.ready_at <= t)
            desired = scaler.decide(float(t), current, sample, ready=ready).desired
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
        series.worker_seconds.append(worker_seconds)
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
