"""Celery's event stream -> task counters, runtime histogram and a table of live workers.

A thread runs Celery's ``EventReceiver`` and reconnects with backoff when the broker
goes away.  Nothing here sends a broadcast ``inspect`` on a scrape:

* task counters and the runtime histogram come from ``task-*`` events;
* workers come from ``worker-online`` / ``worker-heartbeat`` / ``worker-offline``
  (a heartbeat carries ``active``, ``processed``, ``freq``, ``loadavg``);
* which queues a worker consumes and how many pool processes it has are *not* in any
  event, so the first time a worker shows up the exporter asks that one worker
  (``destination=[hostname]``) for ``active_queues`` and ``stats``, once per worker
  lifetime, in a background thread (retried at most every ``probe_retry`` seconds
  until it answers).  Cost: O(new workers), never O(scrapes).

Task series carry ``name`` and ``queue_name`` (plus ``exception`` on failures), never a
worker host name.  A task's queue comes from its ``task-sent`` event (which names the
queue); when that was missed, from the worker that ran it if that worker consumes one
queue; otherwise ``unknown``.
"""

from __future__ import annotations

import logging
import queue as queue_module
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from prometheus_client import CollectorRegistry, Counter, Histogram

logger = logging.getLogger("celery_fleet.exporter.events")

UNKNOWN = "unknown"
#: Runtime buckets reach long tasks: seconds up to an hour.
RUNTIME_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
    3600.0, float("inf"),
)  # fmt: skip
#: event type -> celery-exporter's counter name (without the ``_total`` suffix).
TASK_COUNTERS = {
    "task-sent": ("celery_task_sent", "Sent when a task message is published."),
    "task-received": ("celery_task_received", "Sent when the worker receives a task."),
    "task-started": ("celery_task_started", "Sent just before the worker executes the task."),
    "task-succeeded": ("celery_task_succeeded", "Sent if the task executed successfully."),
    "task-failed": ("celery_task_failed", "Sent if the execution of the task failed."),
    "task-retried": ("celery_task_retried", "Sent if the task failed, but will be retried."),
    "task-revoked": ("celery_task_revoked", "Sent if the task has been revoked."),
    "task-rejected": (
        "celery_task_rejected",
        "Sent if the worker rejected the task (requeue or dead letter).",
    ),
}
_FINAL = {"task-succeeded", "task-failed", "task-revoked"}
_EXCEPTION_CLASS = re.compile(r"^([A-Za-z_][\w.]*)\(")


def exception_class(text: Any) -> str:
    match = _EXCEPTION_CLASS.match(str(text or ""))
    return match.group(1) if match else "UnknownException"


class TaskMetrics:
    """celery-exporter's task series, without host names: ``name``, ``queue_name`` (``exception``)."""

    def __init__(self, registry: CollectorRegistry, *, max_tracked_tasks: int = 10_000) -> None:
        self.counters: dict[str, Counter] = {}
        for event_type, (metric, documentation) in TASK_COUNTERS.items():
            labels = (
                ["name", "queue_name", "exception"] if event_type == "task-failed" else ["name", "queue_name"]
            )
            self.counters[event_type] = Counter(metric, documentation, labels, registry=registry)
        self.runtime = Histogram(
            "celery_task_runtime",
            "Runtime of succeeded tasks, in seconds.",
            ["name", "queue_name"],
            buckets=RUNTIME_BUCKETS,
            registry=registry,
        )
        self._tasks: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._max_tracked = max_tracked_tasks
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def _remember(self, uuid: str, name: str, queue: str) -> None:
        self._tasks[uuid] = (name, queue)
        self._tasks.move_to_end(uuid)
        while len(self._tasks) > self._max_tracked:
            self._tasks.popitem(last=False)

    def on_event(self, event: Mapping[str, Any], queue_of_worker: Callable[[str], str | None]) -> None:
        event_type = event.get("type", "")
        if event_type not in self.counters:
            return
        uuid = str(event.get("uuid", ""))
        with self._lock:
            known_name, known_queue = self._tasks.get(uuid, (None, None))
            name = str(event.get("name") or known_name or UNKNOWN)
            queue = event.get("queue") or known_queue
            if not queue and event.get("hostname") and event_type != "task-sent":
                queue = queue_of_worker(str(event["hostname"]))
            queue = str(queue or UNKNOWN)
            if event_type in _FINAL:
                self._tasks.pop(uuid, None)
            elif uuid:
                self._remember(uuid, name, queue)
            if (name, queue) not in self._seen:
                # Make every series of this task visible at 0, so ratios and rates have data.
                self._seen.add((name, queue))
                for other_type, counter in self.counters.items():
                    extra = {"exception": ""} if other_type == "task-failed" else {}
                    counter.labels(name=name, queue_name=queue, **extra).inc(0)
                self.runtime.labels(name=name, queue_name=queue)
        if event_type == "task-failed":
            self.counters[event_type].labels(
                name=name, queue_name=queue, exception=exception_class(event.get("exception"))
            ).inc()
        else:
            self.counters[event_type].labels(name=name, queue_name=queue).inc()
        if event_type == "task-succeeded":
            runtime = event.get("runtime")
            if isinstance(runtime, int | float) and runtime >= 0:
                self.runtime.labels(name=name, queue_name=queue).observe(float(runtime))


@dataclass
class WorkerInfo:
    hostname: str
    last_seen: float
    freq: float = 2.0
    active: int = 0
    processed: int = 0
    online: bool = True
    queues: tuple[str, ...] | None = None
    processes: int | None = None
    probed_at: float = float("-inf")

    def alive(self, now: float) -> bool:
        # Three missed heartbeats (and never under 10 s) before a worker counts as gone.
        return self.online and now - self.last_seen <= max(3.0 * self.freq, 10.0)


@dataclass
class WorkerTable:
    """Workers seen on the event stream; thread-safe; forgets workers gone for ``forget_after`` seconds."""

    forget_after: float = 600.0
    workers: dict[str, WorkerInfo] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_worker_event(self, event: Mapping[str, Any], now: float | None = None) -> WorkerInfo | None:
        hostname = event.get("hostname")
        if not hostname:
            return None
        now = time.time() if now is None else now
        event_type = event.get("type", "")
        with self._lock:
            info = self.workers.get(hostname)
            if info is None:
                info = self.workers[hostname] = WorkerInfo(hostname=hostname, last_seen=now)
            info.last_seen = now
            info.online = event_type != "worker-offline"
            if event_type == "worker-offline":
                info.active = 0
            if isinstance(event.get("freq"), int | float) and event["freq"] > 0:
                info.freq = float(event["freq"])
            if isinstance(event.get("active"), int):
                info.active = int(event["active"])
            if isinstance(event.get("processed"), int):
                info.processed = int(event["processed"])
            return info

    def set_details(self, hostname: str, queues: Iterable[str] | None, processes: int | None) -> None:
        with self._lock:
            info = self.workers.get(hostname)
            if info is None:
                return
            if queues is not None:
                info.queues = tuple(queues)
            if processes is not None:
                info.processes = processes

    def queue_of_worker(self, hostname: str) -> str | None:
        with self._lock:
            info = self.workers.get(hostname)
            if info is not None and info.queues is not None and len(info.queues) == 1:
                return info.queues[0]
        return None

    def snapshot(self, now: float | None = None) -> list[WorkerInfo]:
        now = time.time() if now is None else now
        with self._lock:
            for hostname, info in list(self.workers.items()):
                if now - info.last_seen > self.forget_after:
                    del self.workers[hostname]
            return [
                WorkerInfo(**{k: getattr(info, k) for k in WorkerInfo.__dataclass_fields__})
                for info in self.workers.values()
            ]


class WorkerProber(threading.Thread):
    """Asks one worker at a time which queues it consumes and how many processes it runs."""

    def __init__(
        self, app: Celery, table: WorkerTable, *, timeout: float = 3.0, probe_retry: float = 30.0
    ) -> None:
        super().__init__(name="worker-prober", daemon=True)
        self.app = app
        self.table = table
        self.timeout = timeout
        self.probe_retry = probe_retry
        self._todo: queue_module.Queue[str | None] = queue_module.Queue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()

    def maybe_probe(self, info: WorkerInfo) -> None:
        if info.queues is not None and info.processes is not None:
            return
        now = time.monotonic()
        with self._lock:
            if info.hostname in self._pending or now - info.probed_at < self.probe_retry:
                return
            self._pending.add(info.hostname)
        info.probed_at = now
        self._todo.put(info.hostname)

    def stop(self) -> None:
        self._todo.put(None)

    def run(self) -> None:
        while True:
            hostname = self._todo.get()
            if hostname is None:
                return
            try:
                self._probe(hostname)
            except Exception:
                logger.warning("could not ask %s for its queues", hostname, exc_info=True)
            finally:
                with self._lock:
                    self._pending.discard(hostname)

    def _probe(self, hostname: str) -> None:
        inspect = self.app.control.inspect(destination=[hostname], timeout=self.timeout)
        queues_reply = (inspect.active_queues() or {}).get(hostname)
        stats_reply: Any = (inspect.stats() or {}).get(hostname) or {}
        queues = [str(q["name"]) for q in queues_reply or [] if isinstance(q, dict) and q.get("name")]
        pool = stats_reply.get("pool") or {}
        processes: int | None = None
        if isinstance(pool.get("processes"), list):
            processes = len(pool["processes"])
        elif isinstance(pool.get("max-concurrency"), int):
            processes = int(pool["max-concurrency"])
        self.table.set_details(hostname, queues if queues_reply is not None else None, processes)
        logger.info("worker %s consumes %s with %s processes", hostname, queues, processes)


class EventMonitor(threading.Thread):
    """Captures Celery events forever; reconnects with backoff (1 s doubling to 30 s)."""

    def __init__(
        self, app: Celery, tasks: TaskMetrics, workers: WorkerTable, prober: WorkerProber | None
    ) -> None:
        super().__init__(name="celery-events", daemon=True)
        self.app = app
        self.tasks = tasks
        self.workers = workers
        self.prober = prober
        self.connected = threading.Event()
        self.events_seen = 0
        self._stopping = threading.Event()
        self._receiver: Any = None

    def on_event(self, event: dict[str, Any]) -> None:
        self.events_seen += 1
        event_type = str(event.get("type", ""))
        try:
            if event_type.startswith("worker-"):
                info = self.workers.on_worker_event(event)
                if info is not None and info.online and self.prober is not None:
                    self.prober.maybe_probe(info)
            elif event_type.startswith("task-"):
                if event.get("hostname") and event_type != "task-sent":
                    # Any task event from a worker proves it is alive.
                    self.workers.on_worker_event({"hostname": event["hostname"], "type": "worker-task"})
                self.tasks.on_event(event, self.workers.queue_of_worker)
        except Exception:
            logger.exception("could not account event %r", event_type)

    def stop(self) -> None:
        self._stopping.set()
        if self._receiver is not None:
            self._receiver.should_stop = True

    def run(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            try:
                with self.app.connection_for_read() as connection:
                    connection.ensure_connection(max_retries=1)
                    self._receiver = self.app.events.Receiver(connection, handlers={"*": self.on_event})
                    self.connected.set()
                    backoff = 1.0
                    logger.info("listening to Celery events on %s", connection.as_uri())
                    # wakeup: one 'heartbeat' broadcast per (re)connect, so workers report at once.
                    self._receiver.capture(limit=None, timeout=None, wakeup=True)
            except Exception as exc:
                if self._stopping.is_set():
                    break
                logger.warning("event stream lost (%s); reconnecting in %.0fs", exc, backoff)
            finally:
                self.connected.clear()
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, 30.0)
