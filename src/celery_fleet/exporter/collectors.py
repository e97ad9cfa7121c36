"""Prometheus collectors read at scrape time: queues from the broker, workers from the event table.

Queue series exist for every configured queue from the first scrape (0 when empty), so
a queue with no worker still reports its backlog and scale-from-zero works.  When the
broker cannot be read the queue series are left out (``celery_fleet_exporter_broker_up``
is 0) instead of reporting a false 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from celery_fleet.exporter.amqp_accounting import AmqpAccounting
from celery_fleet.exporter.events import WorkerInfo, WorkerTable
from celery_fleet.exporter.redis_accounting import DEFAULT_HELD_LIMIT, QueueStats, read_queues
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


class RedisQueueCollector(Collector):
    """``celery_queue_length`` and celery-fleet's backlog, held and oldest-age series from Redis."""

    def __init__(
        self,
        client: Any,
        queues: Callable[[], Sequence[str]],
        *,
        key_prefix: str = "",
        held_limit: int = DEFAULT_HELD_LIMIT,
        health: ScrapeHealth | None = None,
    ) -> None:
        self.client = client
        self.queues = queues
        self.key_prefix = key_prefix
        self.held_limit = held_limit
        self.health = health or ScrapeHealth()
        self.unstamped = UnstampedAges()

    def describe(self) -> Iterable[Metric]:
        return []  # collected at scrape time only; names differ by transport

    def collect(self) -> Iterator[Metric]:
        began = time.perf_counter()
        queues = list(self.queues())
        up = GaugeMetricFamily("celery_fleet_exporter_broker_up", "1 if the last broker read worked.")
        try:
            now = time.time()
            stats, held = read_queues(
                self.client, queues, now=now, key_prefix=self.key_prefix, held_limit=self.held_limit
            )
        except Exception as exc:
            logger.warning("could not read queues from Redis: %s", exc)
            self.health.record(False, time.perf_counter() - began, str(exc))
            up.add_metric([], 0)
            yield up
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
        dead_letters.add_metric([], self.client.llen(f"{self.key_prefix}{DEAD_LETTER_KEY}"))
        truncated = GaugeMetricFamily(
            "celery_fleet_exporter_held_truncated",
            "1 if the unacked hash was larger than the read limit (held counts are then a lower bound).",
        )
        truncated.add_metric([], 1 if held.truncated else 0)
        up.add_metric([], 1)
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
            up,
            read,
        )


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
        up = GaugeMetricFamily("celery_fleet_exporter_broker_up", "1 if the last broker read worked.")
        try:
            stats = self.accounting.queue_stats(list(self.queues()))
        except Exception as exc:
            logger.warning("could not read queues from RabbitMQ: %s", exc)
            self.health.record(False, time.perf_counter() - began, str(exc))
            up.add_metric([], 0)
            yield up
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
        up.add_metric([], 1)
        self.health.record(True, time.perf_counter() - began)
        yield from (length, consumers, up)


class WorkerCollector(Collector):
    """Worker series from heartbeat events: no broadcast inspect on a scrape.

    Per queue: live workers consuming it, their pool processes, busy (running a task,
    from the heartbeat's ``active``) and idle processes.  A worker consuming several
    queues counts in each of them.  ``celery_worker_up`` and
    ``celery_worker_tasks_active`` carry a ``hostname`` label only with
    ``worker_labels=True``; by default each is one series for the whole fleet.  Workers
    that said goodbye (``worker-offline``) or were silent for ``forget_after`` are forgotten.
    """

    def __init__(
        self,
        table: WorkerTable,
        queues: Callable[[], Sequence[str]],
        *,
        worker_labels: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.queues = queues
        self.worker_labels = worker_labels
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        workers = self.table.snapshot(now)
        alive = [w for w in workers if w.alive(now)]
        names = list(dict.fromkeys([*self.queues(), *(q for w in alive for q in (w.queues or ()))]))
        yield from self._per_queue(names, alive)
        labels = ["hostname"] if self.worker_labels else []
        up = GaugeMetricFamily(
            "celery_worker_up", "1 if the worker sent a heartbeat recently.", labels=labels
        )
        active = GaugeMetricFamily(
            "celery_worker_tasks_active", "Tasks the worker is running (heartbeat).", labels=labels
        )
        if self.worker_labels:
            for w in sorted(workers, key=lambda w: w.hostname):
                is_up = w.alive(now)
                up.add_metric([w.hostname], 1 if is_up else 0)
                active.add_metric([w.hostname], w.active if is_up else 0)
        else:
            # 1 while a worker is alive; 0 when the last ones stopped without saying goodbye
            # (crashed, within the forget window); no sample when the fleet scaled to zero
            # cleanly, so "worker down" alerts stay quiet on scale-to-zero.
            crashed = [w for w in workers if w.online and not w.alive(now)]
            if alive or crashed:
                up.add_metric([], 1 if alive else 0)
            active.add_metric([], sum(w.active for w in alive))
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
