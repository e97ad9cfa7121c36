"""Which queues a worker consumes and how many pool processes it runs: asked once per worker.

No event says either, so the first time a worker shows up on the event stream the exporter
asks that one worker (``destination=[hostname]``) for ``active_queues`` and ``stats``, in a
background thread, retried at most every ``probe_retry`` seconds until it answers.  Cost:
O(new workers), never O(scrapes) (celery-exporter broadcasts both on every scrape).
"""

from __future__ import annotations

import logging
import queue as queue_module
import threading
import time
from typing import Any

from celery import Celery

from celery_fleet.event_stream import WorkerInfo, WorkerTable

logger = logging.getLogger("celery_fleet.exporter.worker_probe")


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
        self._asked_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def on_event(self, event: dict[str, Any]) -> None:
        """An event-stream handler: probe a worker that is new (after the table has seen it)."""
        if not str(event.get("type", "")).startswith("worker-") or not event.get("hostname"):
            return
        _, workers = self.table.snapshot()
        info = next((w for w in workers if w.hostname == event["hostname"]), None)
        if info is not None and info.online:
            self.maybe_probe(info)

    def maybe_probe(self, info: WorkerInfo) -> None:
        if info.queues is not None and info.processes is not None:
            return
        now = time.monotonic()
        with self._lock:
            asked = self._asked_at.get(info.hostname, float("-inf"))
            if info.hostname in self._pending or now - asked < self.probe_retry:
                return
            self._pending.add(info.hostname)
            self._asked_at[info.hostname] = now
        self._todo.put(info.hostname)

    def stop(self, timeout: float | None = None) -> None:
        self._todo.put(None)
        if timeout is not None and self.is_alive():
            self.join(timeout)

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
