"""Celery's event stream, read once for the whole library: which workers are alive and how busy.

Two components need the workers' own account of themselves, and both read it here with the
same rules: the exporter (``celery_worker_up``, processes per queue) and the pod-deletion-cost
component (idle pods cheapest).  Every Celery worker sends ``worker-online``, a
``worker-heartbeat`` every ``freq`` seconds (2 s by default; the heartbeat carries ``active``,
the tasks its pool runs) and ``worker-offline`` when it stops cleanly.  These *worker* events
are sent even with task events off (``worker_send_task_events=False``, the presets' default);
task events, when a fleet turns them on for Flower, only refine ``active`` between beats.

The rules, in one place:

* **alive**: online and heard from within :func:`stale_after` (three heartbeat intervals,
  never under 10 s), so one lost beat on a loaded node does not flap a worker;
* **forgotten**: not heard from for ``forget_after`` seconds (10 min, celery-exporter's
  ``--purge-offline-worker-metrics`` default); until then a gone worker is still listed
  (``alive`` false), so per-worker series go to 0 before they disappear;
* **the stream is silent** when no event at all arrived for :func:`stale_after` of the
  default interval (a broker outage): callers then hold their last decision instead of
  reading "every worker is gone".

:class:`EventStream` is the one receiver thread: it reconnects with backoff (1 s doubling to
30 s) and asks every worker for a heartbeat at once on each (re)connect.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from celery import Celery

logger = logging.getLogger("celery_fleet.event_stream")

#: Celery's default ``worker-heartbeat`` interval (``--heartbeat-interval``).
DEFAULT_HEARTBEAT_SECONDS = 2.0
HEARTBEAT_MISSES = 3
MIN_STALE_SECONDS = 10.0
#: celery-exporter's ``--purge-offline-worker-metrics`` default.
DEFAULT_FORGET_AFTER = 600.0
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0

Event = Mapping[str, Any]
Handler = Callable[[dict[str, Any]], object]


def stale_after(freq: float = DEFAULT_HEARTBEAT_SECONDS) -> float:
    """Seconds without a word after which a worker (or the whole stream) says nothing any more."""
    return max(HEARTBEAT_MISSES * freq, MIN_STALE_SECONDS)


def host_of(nodename: str) -> str:
    """``celery@worker-7d9f-abcde`` -> ``worker-7d9f-abcde``: the node name's host part.

    celery-exporter labels workers this way (``celery.utils.nodesplit``); in a pod the host part
    is the pod name.
    """
    return nodename.rpartition("@")[2] if "@" in nodename else nodename


@dataclass(frozen=True)
class WorkerInfo:
    hostname: str  # Celery's node name, ``<name>@<host>``
    last_seen: float  # the table's clock
    freq: float = DEFAULT_HEARTBEAT_SECONDS
    active: int = 0
    processed: int = 0
    online: bool = True
    #: What the worker consumes and how many pool processes it runs: not in any event; the
    #: exporter asks the worker once (``exporter.worker_probe``).
    queues: tuple[str, ...] | None = None
    processes: int | None = None

    def alive(self, now: float) -> bool:
        return self.online and now - self.last_seen <= stale_after(self.freq)


class WorkerTable:
    """Workers seen on the event stream (thread-safe); the clock is monotonic unless given."""

    def __init__(
        self, *, forget_after: float = DEFAULT_FORGET_AFTER, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.forget_after = forget_after
        self.clock = clock
        self.last_event_at: float | None = None
        self._workers: dict[str, WorkerInfo] = {}
        self._lock = threading.Lock()

    def on_event(self, event: Event) -> WorkerInfo | None:
        """Account one event (``worker-*`` or ``task-*``); the worker's new state, if it names one."""
        event_type = str(event.get("type", ""))
        hostname = event.get("hostname")
        now = self.clock()
        with self._lock:
            self.last_event_at = now
            if not hostname or event_type == "task-sent":  # task-sent comes from the publisher
                return None
            hostname = str(hostname)
            info = self._workers.get(hostname) or WorkerInfo(hostname=hostname, last_seen=now)
            changes: dict[str, Any] = {"last_seen": now, "online": event_type != "worker-offline"}
            if event_type == "worker-offline":
                changes["active"] = 0
            elif event_type == "task-started":
                # Between heartbeats: a worker that starts a task is busy now, not in 2 s.
                changes["active"] = info.active + 1
            freq, active, processed = event.get("freq"), event.get("active"), event.get("processed")
            if isinstance(freq, int | float) and freq > 0:
                changes["freq"] = float(freq)
            if isinstance(active, int):
                changes["active"] = active
            if isinstance(processed, int):
                changes["processed"] = processed
            info = self._workers[hostname] = replace(info, **changes)
            return info

    def set_details(self, hostname: str, queues: Iterable[str] | None, processes: int | None) -> None:
        with self._lock:
            info = self._workers.get(hostname)
            if info is None:
                return
            self._workers[hostname] = replace(
                info,
                queues=tuple(queues) if queues is not None else info.queues,
                processes=processes if processes is not None else info.processes,
            )

    def snapshot(self) -> tuple[float, list[WorkerInfo]]:
        """``(now, workers)``: every worker heard from within ``forget_after``, alive or not."""
        now = self.clock()
        with self._lock:
            for hostname, info in list(self._workers.items()):
                if now - info.last_seen > self.forget_after:
                    del self._workers[hostname]
            return now, list(self._workers.values())

    def active_by_hostname(self) -> dict[str, int | None]:
        """Tasks each worker runs; ``None`` for a worker that is not alive (its count says nothing)."""
        now, workers = self.snapshot()
        return {w.hostname: (w.active if w.alive(now) else None) for w in workers}

    def silent_for(self) -> float | None:
        """Seconds since the last event of any kind; ``None`` before the first."""
        with self._lock:
            return None if self.last_event_at is None else self.clock() - self.last_event_at

    def stream_silent(self) -> bool:
        silent = self.silent_for()
        return silent is None or silent > stale_after()


class EventStream(threading.Thread):
    """Receives Celery events forever and hands each to ``handlers``; reconnects with backoff."""

    def __init__(self, broker_url: str, handlers: Sequence[Handler], *, name: str = "celery-events") -> None:
        super().__init__(name=name, daemon=True)
        self.app = Celery(f"celery-fleet-{name}", broker=broker_url, set_as_current=False)
        self.app.conf.update(
            broker_connection_retry_on_startup=True,
            # The event queue a receiver declares on RabbitMQ goes away soon after the receiver does.
            event_queue_expires=60.0,
            event_queue_ttl=5.0,
        )
        self.handlers = list(handlers)
        self.connected = threading.Event()
        self.events_seen = 0
        self._stopping = threading.Event()
        self._receiver: Any = None

    def on_event(self, event: dict[str, Any]) -> None:
        self.events_seen += 1
        for handler in self.handlers:
            try:
                handler(event)
            except Exception:
                logger.exception("could not account event %r", event.get("type"))

    def stop(self, timeout: float | None = None) -> None:
        self._stopping.set()
        if self._receiver is not None:
            self._receiver.should_stop = True
        if timeout is not None and self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stopping.is_set():
            try:
                with self.app.connection_for_read() as connection:
                    connection.ensure_connection(max_retries=1)
                    self._receiver = self.app.events.Receiver(connection, handlers={"*": self.on_event})
                    self.connected.set()
                    backoff = BACKOFF_FIRST
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
            backoff = min(backoff * 2, BACKOFF_MAX)
