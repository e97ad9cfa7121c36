"""The scaling policy against real worker processes on one machine (``celery-fleet up``).

Every ``interval`` seconds :meth:`LocalAutoscaler.step` reads the broker's queue statistics
(:func:`celery_fleet.exporter.redis_accounting.queue_stats`: the same numbers the exporter
publishes as ``celery_fleet_queue_backlog`` and ``celery_fleet_queue_oldest_age_seconds``),
runs one :class:`~celery_fleet.autoscale.policy.Autoscaler` per worker group and asks a
:class:`WorkerGroupControl` to add or remove workers.

Which worker goes is the control's business.  :class:`WorkerGroupsControl` drives the local
fleet's :class:`celery_fleet.local.workers.WorkerGroup`, which removes idle workers first
(tasks held, read from each worker's heartbeat file) and stops them through the graceful
drain (SIGTERM: stop consuming, let running tasks finish within the drain window, requeue
the rest) - the local twin of ``controller.kubernetes.io/pod-deletion-cost``.

``celery-fleet up`` hands its fleet over as a :class:`ScalableFleet` (its groups, its broker,
where decisions and failures are reported) to :func:`build_local_autoscaler` and runs
:meth:`LocalAutoscaler.run` in a thread of its own.

A failed broker read raises: no decision is made on numbers that were not read (the
caller's loop logs it and tries again next interval).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from celery_fleet.autoscale.policy import (
    Autoscaler,
    Decision,
    QueueMetrics,
    ScalingPolicy,
    recommended_policy,
)

if TYPE_CHECKING:
    from celery_fleet.local.workers import WorkerGroup

logger = logging.getLogger("celery_fleet.autoscale")


class WorkerGroupControl(Protocol):
    """What the autoscaler needs from whatever runs the workers."""

    def replicas(self, group: str) -> int:
        """Workers of ``group`` that count as replicas (starting or running, not draining)."""
        ...

    def scale_up(self, group: str, count: int) -> None: ...

    def scale_down(self, group: str, count: int) -> None:
        """Remove ``count`` workers, idle ones first, through the graceful drain; don't block."""
        ...


class QueueStatsLike(Protocol):
    @property
    def waiting(self) -> int: ...

    @property
    def held(self) -> int: ...

    @property
    def oldest_age_seconds(self) -> float | None: ...


StatsReader = Callable[[Sequence[str]], Mapping[str, QueueStatsLike]]
LogLine = Callable[[str], None]
DecisionSink = Callable[[str, Decision], None]


class ScaledGroup(Protocol):
    """A worker group as the autoscaler sees it (:class:`celery_fleet.local.workers.WorkerGroupSpec`)."""

    @property
    def name(self) -> str: ...

    @property
    def queues(self) -> tuple[str, ...]: ...

    @property
    def concurrency(self) -> int: ...

    @property
    def min_workers(self) -> int: ...

    @property
    def max_workers(self) -> int: ...


class ScalableFleet(WorkerGroupControl, Protocol):
    """What the local autoscaler needs from the fleet it scales
    (:class:`celery_fleet.local.fleet.LocalFleet`): its groups, its broker, a place to report."""

    @property
    def broker_url(self) -> str: ...

    def scaled_groups(self) -> Sequence[ScaledGroup]: ...

    def record_decision(self, group: str, decision: Decision) -> None:
        """Every decision of every step (the fleet decides which to print)."""
        ...

    def report(self, line: str) -> None:
        """A line for the fleet's log (a step that failed)."""
        ...


@dataclass(frozen=True)
class GroupTarget:
    """One worker group: the queues it consumes and how it scales."""

    name: str
    queues: tuple[str, ...]
    policy: ScalingPolicy


def group_metrics(stats: Mapping[str, QueueStatsLike], queues: Sequence[str]) -> QueueMetrics:
    """Sum a group's queues: waiting and held add up, the oldest age is the largest.  A queue
    with waiting messages but no age (its oldest message carries no publish stamp) makes the
    age unreadable (None), which the policy treats as a missing metric, not as 0 s."""
    waiting = held = 0
    oldest: float | None = 0.0
    for queue in queues:
        s = stats.get(queue)
        if s is None:
            continue
        waiting += s.waiting
        held += s.held
        if s.oldest_age_seconds is None:
            if s.waiting > 0:
                oldest = None
        elif oldest is not None:
            oldest = max(oldest, s.oldest_age_seconds)
    return QueueMetrics(waiting=waiting, held=held, oldest_age_seconds=oldest)


class LocalAutoscaler:
    def __init__(
        self,
        control: WorkerGroupControl,
        groups: Sequence[GroupTarget],
        read_stats: StatsReader,
        *,
        log: LogLine | None = None,
        on_decision: DecisionSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not groups:
            raise ValueError("LocalAutoscaler needs at least one worker group")
        self.control = control
        self.groups = list(groups)
        self.read_stats = read_stats
        self.log = log or logger.info
        #: Given: every decision goes there instead of the log lines of :meth:`_log`.
        self.on_decision = on_decision
        self.clock = clock
        self.scalers = {g.name: Autoscaler(g.policy) for g in self.groups}
        self.history: list[tuple[float, str, Decision]] = []
        self._last_logged: dict[str, tuple[Any, ...]] = {}

    def step(self) -> dict[str, Decision]:
        """Read the queues once, decide for every group, act; return the decisions."""
        queues = sorted({q for g in self.groups for q in g.queues})
        stats = self.read_stats(queues)
        now = self.clock()
        decisions: dict[str, Decision] = {}
        for group in self.groups:
            current = self.control.replicas(group.name)
            metrics = group_metrics(stats, group.queues)
            decision = self.scalers[group.name].decide(now, current, metrics)
            decisions[group.name] = decision
            self.history.append((now, group.name, decision))
            if self.on_decision is not None:
                self.on_decision(group.name, decision)
            else:
                self._log(group.name, decision)
            if decision.desired > current:
                self.control.scale_up(group.name, decision.desired - current)
            elif decision.desired < current:
                self.control.scale_down(group.name, current - decision.desired)
        del self.history[:-10_000]
        return decisions

    def _log(self, group: str, decision: Decision) -> None:
        """Every decision that changes something, or whose inputs or reason changed, one line each;
        a steady, idle fleet stays quiet."""
        key = (decision.current, decision.desired, decision.inputs.get("backlog"), decision.reason)
        if decision.change == 0 and self._last_logged.get(group) == key:
            return
        self._last_logged[group] = key
        self.log(decision.log_line(group))

    def run(self, stop: threading.Event, interval: float) -> None:
        """Step every ``interval`` seconds until ``stop`` is set; a failed step is logged, not fatal."""
        while not stop.wait(interval):
            try:
                self.step()
            except Exception as exc:
                self.log(f"autoscale step failed: {exc!r}")


class WorkerGroupsControl:
    """:class:`WorkerGroupControl` over the local fleet's :class:`~celery_fleet.local.workers.WorkerGroup`."""

    def __init__(self, groups: Mapping[str, WorkerGroup]) -> None:
        self.groups = groups

    def replicas(self, group: str) -> int:
        return self.groups[group].replicas()

    def scale_up(self, group: str, count: int) -> None:
        self.groups[group].scale_up(count)

    def scale_down(self, group: str, count: int) -> None:
        self.groups[group].scale_down(count, wait=False)


def redis_stats_reader(broker_url: str) -> StatsReader:
    """Queue statistics from a Redis broker, through the exporter's accounting."""
    import redis

    from celery_fleet.exporter.redis_accounting import queue_stats

    client = redis.Redis.from_url(broker_url, socket_timeout=10, socket_connect_timeout=5)

    def read(queues: Sequence[str]) -> Mapping[str, QueueStatsLike]:
        return queue_stats(client, queues)

    return read


def group_policy(
    min_workers: int, max_workers: int, concurrency: int = 1, *, base: ScalingPolicy | None = None
) -> ScalingPolicy:
    """celery-fleet's policy for a group: 2 tasks (waiting or held) per worker process."""
    from dataclasses import replace

    policy = base or recommended_policy()
    return replace(
        policy,
        backlog_per_worker=policy.backlog_per_worker * max(concurrency, 1),
        min_replicas=min_workers,
        max_replicas=max(max_workers, min_workers, 1),
    ).validated()


def build_local_autoscaler(fleet: ScalableFleet, *, base: ScalingPolicy | None = None) -> LocalAutoscaler:
    """The autoscaler of ``celery-fleet up``: one target per worker group of the fleet."""
    targets = [
        GroupTarget(
            name=group.name,
            queues=tuple(group.queues),
            policy=group_policy(group.min_workers, group.max_workers, group.concurrency, base=base),
        )
        for group in fleet.scaled_groups()
    ]
    return LocalAutoscaler(
        fleet,
        targets,
        redis_stats_reader(fleet.broker_url),
        log=fleet.report,
        on_decision=fleet.record_decision,
    )
