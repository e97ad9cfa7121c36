"""Worker lifecycle: publish stamps, probe files and the graceful drain.

Shutdown uses Celery's own machinery (Celery >= 5.5): with ``REMAP_SIGTERM=SIGQUIT``
in the worker's environment SIGTERM starts a *soft shutdown*: the worker stops
consuming at once, waits ``worker_soft_shutdown_timeout`` (the drain window) for
running tasks, then cancels what is still running; the Redis transport puts those
unacked messages back on their queue when the channel closes, at once rather than
after the visibility timeout.  What Celery lacks, added here:

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

from celery_fleet import followups, publish, task_metrics, transport
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


def install(app: Celery) -> None:
    """Hook celery-fleet's lifecycle into a Celery app (call once, next to ``Celery(...)``)."""
    transport.install()
    publish.install()  # one round trip per enqueue on Redis
    before_task_publish.connect(stamp_published_at, weak=False)
    app.steps["consumer"].add(ProbeFilesStep)
    task_metrics.install(app)  # counts tasks where they run and are published, without task events
    followups.install(app)  # link/link_error on a queue every worker reads first

    def on_worker_ready(**_: Any) -> None:
        # Celery runs its soft-shutdown wait inside the signal handler, before it sends
        # ``worker_shutting_down``; readiness must go first, so wrap the handlers.
        for signum in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
            _mark_unready_before(app, signum)

    worker_ready.connect(on_worker_ready, weak=False)


def _mark_unready_before(app: Celery, signum: int) -> None:
    celery_handler = signal.getsignal(signum)
    if not callable(celery_handler):
        return

    def handler(sig: int, frame: Any) -> None:
        directory = probe_dir(app)
        if directory is not None:
            (directory / READY_FILE).unlink(missing_ok=True)
        logger.warning(
            "%s: not ready; draining for up to %ss, then requeuing unfinished tasks",
            signal.Signals(sig).name,
            app.conf.worker_soft_shutdown_timeout,
        )
        celery_handler(sig, frame)

    signal.signal(signum, handler)


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
