"""Prometheus collectors read at scrape time: queues and task totals from Redis, workers from events.

Queue series exist for every configured queue from the first scrape (0 when empty), so
a queue with no worker still reports its backlog and scale-from-zero works.  When the
broker cannot be read the queue series are left out (``celery_fleet_broker_up`` is 0)
instead of reporting a false 0.  A scrape is one round trip to Redis: the queue read and
the task totals (``exporter.task_series``) go in one pipeline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from celery_fleet.event_stream import WorkerInfo, WorkerTable
from celery_fleet.exporter import task_series
from celery_fleet.exporter.amqp_accounting import AmqpAccounting
from celery_fleet.exporter.redis_accounting import (
    DEFAULT_HELD_LIMIT,
    QueueStats,
    ScriptCall,
    read_queues,
    run_scripts,
)
from celery_fleet.exporter.task_series import HostnameLabels
from celery_fleet.transport import DEAD_LETTER_KEY

logger = logging.getLogger("celery_fleet.exporter.collectors")


@dataclass
class UnstampedAges:
    """Age of oldest messages that carry no publish stamp: time since the exporter first saw them waiting.

    Keyed by queue; the clock starts when a scrape first finds a queue whose oldest
    message is unstamped and resets when the queue drains.  It is a lower bound (the
    message may have waited before the exporter started), and it never raises.
    """

    first_seen: dict[str, float] = field(default_factory=dict)

    def age(self, queue: str, stats: QueueStats, now: float) -> float | None:
        if stats.waiting == 0 or not stats.unstamped_oldest:
            self.first_seen.pop(queue, None)
            return stats.oldest_age_seconds
        seen = self.first_seen.setdefault(queue, now)
        observed = now - seen
        return observed if stats.oldest_age_seconds is None else max(observed, stats.oldest_age_seconds)


@dataclass
class ScrapeHealth:
    """What /healthz reports: when the broker was last read and whether that worked."""

    last_ok: float | None = None
    last_error: str | None = None
    durations: list[float] = field(default_factory=list)

    def record(self, ok: bool, seconds: float, error: str | None = None) -> None:
        if ok:
            self.last_ok = time.time()
            self.last_error = None
        else:
            self.last_error = error
        self.durations = [*self.durations[-99:], seconds]


def broker_up(value: int) -> GaugeMetricFamily:
    up = GaugeMetricFamily("celery_fleet_broker_up", "1 if this scrape could read the broker.")
    up.add_metric([], value)
    return up


@dataclass(frozen=True)
class TaskSeriesSource:
    """Where the task totals are read and which series they get (shared by both collectors)."""

    labels: HostnameLabels
    purge_after: float

    def call(self, now: float) -> ScriptCall:
        keys, args = task_series.script_args(now, self.purge_after)
        return ScriptCall(task_series.READ_SCRIPT, keys, args)

    def families(self, reply: Any) -> Iterator[Metric]:
        if isinstance(reply, Exception):  # e.g. scripting refused: the queue series still count
            logger.warning("could not read task totals: %s", reply)
            return
        yield from task_series.task_families(task_series.parse_reply(reply), self.labels)


#: The length of celery_fleet.transport's dead-letter list (a script so it joins the scrape's pipeline).
DEAD_LETTER_LENGTH_SCRIPT = "return redis.call('LLEN', KEYS[1])"


class RedisQueueCollector(Collector):
    """``celery_queue_length``, celery-fleet's backlog, held and oldest-age series, and (when the
    metrics live on the broker) the task series, in one round trip to Redis."""

    def __init__(
        self,
        client: Any,
        queues: Callable[[], Sequence[str]],
        *,
        key_prefix: str = "",
        held_limit: int = DEFAULT_HELD_LIMIT,
        health: ScrapeHealth | None = None,
        tasks: TaskSeriesSource | None = None,
    ) -> None:
        self.client = client
        self.queues = queues
        self.key_prefix = key_prefix
        self.held_limit = held_limit
        self.health = health or ScrapeHealth()
        self.tasks = tasks
        self.unstamped = UnstampedAges()

    def describe(self) -> Iterable[Metric]:
        return []  # collected at scrape time only; names differ by transport

    def dead_letter_call(self) -> ScriptCall:
        return ScriptCall(DEAD_LETTER_LENGTH_SCRIPT, [f"{self.key_prefix}{DEAD_LETTER_KEY}"], [])

    def collect(self) -> Iterator[Metric]:
        began = time.perf_counter()
        queues = list(self.queues())
        try:
            now = time.time()
            # The dead-letter count rides in the same round trip as the queues.
            also = [self.dead_letter_call(), *([self.tasks.call(now)] if self.tasks is not None else [])]
            stats, held, extra = read_queues(
                self.client,
                queues,
                now=now,
                key_prefix=self.key_prefix,
                held_limit=self.held_limit,
                also=also,
            )
        except Exception as exc:
            logger.warning("could not read queues from Redis: %s", exc)
            self.health.record(False, time.perf_counter() - began, str(exc))
            yield broker_up(0)
            return
        length = GaugeMetricFamily(
            "celery_queue_length",
            "Messages waiting in the broker queue, all priority lists included.",
            labels=["queue_name"],
        )
        by_priority = GaugeMetricFamily(
            "celery_fleet_queue_priority_length",
            "Messages waiting in one priority list of the queue (only non-empty lists).",
            labels=["queue_name", "priority"],
        )
        held_gauge = GaugeMetricFamily(
            "celery_fleet_queue_held",
            "Messages delivered to workers and not acknowledged yet (prefetched or running, late acks).",
            labels=["queue_name"],
        )
        backlog = GaugeMetricFamily(
            "celery_fleet_queue_backlog",
            "Waiting plus held messages: the work a scaler must cover.",
            labels=["queue_name"],
        )
        oldest = GaugeMetricFamily(
            "celery_fleet_queue_oldest_age_seconds",
            "Age of the oldest waiting message (queue latency); 0 when nothing waits.",
            labels=["queue_name"],
        )
        unstamped = GaugeMetricFamily(
            "celery_fleet_queue_oldest_unstamped",
            "1 if an oldest waiting message has no publish stamp (its age is then time since first seen).",
            labels=["queue_name"],
        )
        for queue, s in stats.items():
            length.add_metric([queue], s.waiting)
            for step, count in sorted(s.waiting_by_priority.items()):
                by_priority.add_metric([queue, str(step)], count)
            held_gauge.add_metric([queue], s.held)
            backlog.add_metric([queue], s.backlog)
            age = self.unstamped.age(queue, s, now)
            oldest.add_metric([queue], age or 0.0)
            unstamped.add_metric([queue], 1 if s.unstamped_oldest else 0)
        # Messages celery_fleet.transport moved aside (undecodable, rejected, over the delivery
        # limit): each waits for `celery-fleet dead-letter` -- alert when it is not 0.
        dead_letters = GaugeMetricFamily(
            "celery_fleet_dead_letter_messages",
            "Messages in the Redis dead-letter list (celery-fleet dead-letter list|requeue|drop).",
        )
        if isinstance(extra[0], Exception):
            logger.warning("could not read the dead-letter list: %s", extra[0])
        else:
            dead_letters.add_metric([], int(extra[0]))
        truncated = GaugeMetricFamily(
            "celery_fleet_exporter_held_truncated",
            "1 if the unacked hash was larger than the read limit (held counts are then a lower bound).",
        )
        truncated.add_metric([], 1 if held.truncated else 0)
        seconds = time.perf_counter() - began
        self.health.record(True, seconds)
        read = GaugeMetricFamily(
            "celery_fleet_exporter_broker_read_seconds", "Time this scrape spent reading the broker."
        )
        read.add_metric([], seconds)
        yield from (
            length,
            by_priority,
            held_gauge,
            backlog,
            oldest,
            unstamped,
            dead_letters,
            truncated,
            broker_up(1),
            read,
        )
        if self.tasks is not None:
            yield from self.tasks.families(extra[1])


class TaskSeriesCollector(Collector):
    """The task series from a metrics Redis that is not the broker (a RabbitMQ fleet)."""

    def __init__(self, client: Any, tasks: TaskSeriesSource) -> None:
        self.client = client
        self.tasks = tasks

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            (reply,) = run_scripts(self.client, [self.tasks.call(time.time())])
        except Exception as exc:
            logger.warning("could not read task totals: %s", exc)
            return
        yield from self.tasks.families(reply)


class AmqpQueueCollector(Collector):
    """``celery_queue_length`` and ``celery_active_consumer_count`` from RabbitMQ (passive declares)."""

    def __init__(
        self,
        accounting: AmqpAccounting,
        queues: Callable[[], Sequence[str]],
        *,
        health: ScrapeHealth | None = None,
    ) -> None:
        self.accounting = accounting
        self.queues = queues
        self.health = health or ScrapeHealth()

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        began = time.perf_counter()
        try:
            stats = self.accounting.queue_stats(list(self.queues()))
        except Exception as exc:
            logger.warning("could not read queues from RabbitMQ: %s", exc)
            self.health.record(False, time.perf_counter() - began, str(exc))
            yield broker_up(0)
            return
        length = GaugeMetricFamily(
            "celery_queue_length", "Messages ready in the broker queue.", labels=["queue_name"]
        )
        consumers = GaugeMetricFamily(
            "celery_active_consumer_count", "Consumers attached to the broker queue.", labels=["queue_name"]
        )
        for queue, s in stats.items():
            length.add_metric([queue], s.messages)
            consumers.add_metric([queue], s.consumers)
        self.health.record(True, time.perf_counter() - began)
        yield from (length, consumers, broker_up(1))


class WorkerCollector(Collector):
    """Worker series from heartbeat events: no broadcast inspect on a scrape.

    ``celery_worker_up`` and ``celery_worker_tasks_active``: one series per worker with
    celery-exporter's ``hostname`` label (:class:`HostnameLabels`), 1 while it sends heartbeats,
    0 once it stopped (a clean ``worker-offline``) or went silent, until it is forgotten
    (``WorkerTable.forget_after``, celery-exporter's purge delay).  Per queue: live workers
    consuming it, their pool processes, busy (running a task, from the heartbeat's ``active``)
    and idle processes; a worker consuming several queues counts in each of them.
    """

    def __init__(
        self, table: WorkerTable, queues: Callable[[], Sequence[str]], *, labels: HostnameLabels
    ) -> None:
        self.table = table
        self.queues = queues
        self.labels = labels

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        now, workers = self.table.snapshot()
        alive = [w for w in workers if w.alive(now)]
        names = list(dict.fromkeys([*self.queues(), *(q for w in alive for q in (w.queues or ()))]))
        yield from self._per_queue(names, alive)
        up = GaugeMetricFamily(
            "celery_worker_up", "Indicates if a worker has recently sent a heartbeat.", labels=["hostname"]
        )
        active = GaugeMetricFamily(
            "celery_worker_tasks_active",
            "The number of tasks the worker is currently processing",
            labels=["hostname"],
        )
        self.labels.observe(w.hostname for w in workers)
        for w in sorted(workers, key=lambda w: w.hostname):
            is_up = w.alive(now)
            up.add_metric([self.labels(w.hostname)], 1 if is_up else 0)
            active.add_metric([self.labels(w.hostname)], w.active if is_up else 0)
        count = GaugeMetricFamily("celery_fleet_worker_count", "Workers that sent a heartbeat recently.")
        count.add_metric([], len(alive))
        unknown = GaugeMetricFamily(
            "celery_fleet_worker_unprobed_count",
            "Live workers whose queues are not known yet (asked once when they appear).",
        )
        unknown.add_metric([], sum(1 for w in alive if w.queues is None))
        yield from (up, active, count, unknown)

    def _per_queue(self, names: list[str], alive: list[WorkerInfo]) -> Iterator[Metric]:
        workers = GaugeMetricFamily(
            "celery_active_worker_count", "Live workers consuming the queue.", labels=["queue_name"]
        )
        processes = GaugeMetricFamily(
            "celery_active_process_count",
            "Pool processes of live workers consuming the queue.",
            labels=["queue_name"],
        )
        busy = GaugeMetricFamily(
            "celery_fleet_busy_process_count",
            "Pool processes running a task, on workers consuming the queue.",
            labels=["queue_name"],
        )
        idle = GaugeMetricFamily(
            "celery_fleet_idle_process_count",
            "Pool processes with nothing to run, on workers consuming the queue.",
            labels=["queue_name"],
        )
        for name in names:
            members = [w for w in alive if w.queues is not None and name in w.queues]
            total = sum(w.processes or 0 for w in members)
            running = sum(min(w.active, w.processes) if w.processes else w.active for w in members)
            workers.add_metric([name], len(members))
            processes.add_metric([name], total)
            busy.add_metric([name], running)
            idle.add_metric([name], max(0, total - running))
        yield from (workers, processes, busy, idle)
