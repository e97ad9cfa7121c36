"""Worker lifecycle: publish stamps, probe files, the graceful drain, dead letters.

Shutdown builds on Celery's own machinery (Celery >= 5.5): with ``REMAP_SIGTERM=SIGQUIT``
in the worker's environment SIGTERM starts a *cold shutdown* whose soft part
(``worker_soft_shutdown_timeout``, the drain window) lets running tasks finish before
cancelling what still runs; the Redis transport puts those unacked messages back on
their queue when the channel closes, at once rather than after the visibility timeout.
What Celery lacks, added here:

* a drain that ends when the work ends (:mod:`celery_fleet.drain`): Celery sleeps the
  whole window once any task runs at SIGTERM;
* a message Celery cannot decode is rejected to the dead-letter list instead of being
  acknowledged and dropped (:class:`DeadLetterStep`);

* a publish-time header on every task, so queue latency can be read from the oldest
  waiting message (``LINDEX``), never by scanning;
* probe files instead of ``celery inspect ping``: a heartbeat refreshed from the
  worker's own event loop (liveness: a wedged loop stops refreshing it) and a
  readiness file present only while the consumer is connected and consuming; it is
  removed the moment shutdown starts.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from celery import Celery, bootsteps
from celery.signals import before_task_publish, worker_ready

from celery_fleet import followups, publish, task_metrics
from celery_fleet.drain import CHECK_INTERVAL, Drain
from celery_fleet.headers import PUBLISHED_AT_HEADER

logger = logging.getLogger("celery_fleet.lifecycle")

#: Seconds between heartbeat refreshes; the liveness probe allows several missed beats.
HEARTBEAT_INTERVAL = 2.0
HEARTBEAT_FILE = "heartbeat"
READY_FILE = "ready"


def probe_dir(app: Celery) -> Path | None:
    configured = app.conf.get("fleet_probe_dir") or os.environ.get("CELERY_FLEET_PROBE_DIR")
    return Path(configured) if configured else None


def _touch(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text or f"{time.time():.3f}\n", encoding="ascii")
    tmp.replace(path)


def _beat(path: Path) -> None:
    """Heartbeat with how busy the worker is, so a local supervisor can stop idle workers first."""
    from celery.worker import state

    held = set(state.reserved_requests) | set(state.active_requests)
    _touch(path, json.dumps({"ts": time.time(), "held": len(held), "active": len(state.active_requests)}))


def stamp_published_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None and PUBLISHED_AT_HEADER not in headers:
        headers[PUBLISHED_AT_HEADER] = time.time()


class ProbeFilesStep(bootsteps.StartStopStep):
    """Consumer bootstep: heartbeat from the event loop, readiness while consuming."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.directory = probe_dir(parent.app)
        self._timer: Any = None

    def start(self, parent: Any) -> None:
        if self.directory is None:
            return
        heartbeat = self.directory / HEARTBEAT_FILE
        _beat(heartbeat)
        self._timer = parent.timer.call_repeatedly(HEARTBEAT_INTERVAL, _beat, (heartbeat,), priority=10)
        _touch(self.directory / READY_FILE)
        logger.info("probe files in %s: consuming, ready", self.directory)

    def stop(self, parent: Any) -> None:
        # The consumer stops on shutdown and on a lost broker connection: not ready either way.
        if self.directory is not None:
            (self.directory / READY_FILE).unlink(missing_ok=True)

    def shutdown(self, parent: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.stop(parent)


class DrainStep(bootsteps.StartStopStep):
    """Consumer bootstep: the drain's event-loop check (see :mod:`celery_fleet.drain`)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timer: Any = None

    def start(self, parent: Any) -> None:
        self._timer = parent.timer.call_repeatedly(CHECK_INTERVAL, drain_of(parent).check, priority=10)

    def stop(self, parent: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class DeadLetterStep(bootsteps.Step):
    """Consumer bootstep: a message Celery cannot decode is rejected, not acknowledged.

    Celery acknowledges (drops) such a message after logging it; rejected without requeue it
    goes to the dead-letter list on Redis (celery_fleet.transport) or to the queue's
    dead-letter exchange on RabbitMQ, where an operator can look at it and requeue it.
    """

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)

        def on_decode_error(message: Any, exc: Exception) -> None:
            logger.critical(
                "cannot decode message body (%s: %s; content-type %r, encoding %r, headers %.500r): "
                "rejecting it to the dead-letter list",
                type(exc).__name__,
                exc,
                message.content_type,
                message.content_encoding,
                message.headers,
            )
            message.reject(requeue=False)

        parent.on_decode_error = on_decode_error


_drains: dict[int, Drain] = {}


def drain_of(consumer: Any) -> Drain:
    """The one drain of this worker process (created on first use)."""
    key = id(consumer)
    if key not in _drains:
        _drains[key] = Drain(consumer.app, consumer, on_start=lambda sig: _mark_unready(consumer.app, sig))
    return _drains[key]


#: Consumer bootsteps celery-fleet adds; another module may append its own before ``install``.
CONSUMER_STEPS: list[type[bootsteps.Step]] = [ProbeFilesStep, DrainStep, DeadLetterStep]


def install(app: Celery) -> None:
    """Hook celery-fleet's lifecycle into a Celery app (call once, next to ``Celery(...)``)."""
    publish.install()  # one round trip per enqueue on Redis
    before_task_publish.connect(stamp_published_at, weak=False)
    for step in CONSUMER_STEPS:
        app.steps["consumer"].add(step)
    task_metrics.install(app)  # counts tasks where they run and are published, without task events
    followups.install(app)  # link/link_error on a queue every worker reads first

    def on_worker_ready(sender: Any = None, **_: Any) -> None:
        # Celery installs its shutdown handlers before the consumer is ready; wrap them so the
        # drain ends with the work and readiness drops first (Celery signals shutdown after it).
        drain = drain_of(sender)
        for signum in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
            drain.wrap(signum)

    worker_ready.connect(on_worker_ready, weak=False)


def _mark_unready(app: Celery, signum: int) -> None:
    directory = probe_dir(app)
    if directory is not None:
        (directory / READY_FILE).unlink(missing_ok=True)
    logger.warning(
        "%s: not ready; draining until running tasks end (at most %ss), then requeuing what still runs",
        signal.Signals(signum).name,
        app.conf.worker_soft_shutdown_timeout,
    )


def worker_load(directory: Path) -> tuple[int, float] | None:
    """(tasks held, heartbeat age) from a worker's probe folder, or None before its first beat."""
    try:
        data = json.loads((directory / HEARTBEAT_FILE).read_text(encoding="ascii"))
        return int(data["held"]), time.time() - float(data["ts"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def probe_status(
    directory: Path, *, check: str, max_age: float = HEARTBEAT_INTERVAL * 10
) -> tuple[bool, str]:
    """What a Kubernetes exec probe asks: ``check`` is ``live`` or ``ready``."""
    heartbeat = directory / HEARTBEAT_FILE
    try:
        age = time.time() - heartbeat.stat().st_mtime
    except FileNotFoundError:
        return False, f"no heartbeat file at {heartbeat}"
    if age > max_age:
        return False, f"heartbeat is {age:.0f}s old (limit {max_age:.0f}s): the worker's event loop is stuck"
    if check == "ready" and not (directory / READY_FILE).exists():
        return False, "worker is not consuming (starting, disconnected from the broker, or draining)"
    return True, f"ok (heartbeat {age:.1f}s ago)"
