"""A drain that ends when the work ends.

Celery's soft shutdown (``REMAP_SIGTERM=SIGQUIT`` + ``worker_soft_shutdown_timeout``)
sleeps the whole window inside the signal handler once any task runs at SIGTERM, even
if that task ends two seconds later -- and while it sleeps the event loop cannot even
acknowledge the tasks that finish.  Every scale-down step and every pod of a rollout
then takes the full window.

:class:`Drain` replaces that wait.  The first SIGTERM (or SIGQUIT, SIGINT) only marks
the worker unready and records the deadline; a timer on the worker's own event loop
then stops consuming, lets running tasks finish and be acknowledged, and hands over to
Celery's cold shutdown the moment nothing is held any more -- or when the window closes,
in which case Celery cancels what still runs and the transport puts it back on its
queue at once.  A second signal cancels at once.  A watchdog thread re-sends the signal
at the deadline, so the drain also ends while the event loop is blocked (for example
reconnecting to a broker that is down).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from celery import Celery

logger = logging.getLogger("celery_fleet.drain")

#: Seconds between the event-loop checks of a running drain (the exit lag after the last task).
CHECK_INTERVAL = 0.2
#: App setting that turns the early end off (Celery's fixed wait), for side-by-side benchmarks.
EARLY_END_SETTING = "fleet_drain_ends_with_work"

SignalHandler = Callable[[int, Any], Any]


def held_requests() -> int:
    """Requests the worker holds: prefetched or running, not yet acknowledged."""
    from celery.worker import state

    return len(state.reserved_requests | state.active_requests)


def stop_idle_pool(consumer: Any) -> None:
    """End the pool's processes at once when none runs a task.

    A pool child answers billiard's graceful stop only after its next poll of the task queue
    (about a second), and Celery joins them one after the other; idle children have nothing
    to finish or save, so they are killed and the pool terminated, and the worker exits right
    after its last task.
    """
    pool = getattr(consumer, "pool", None)
    processes = getattr(getattr(pool, "_pool", None), "_pool", None) or []
    for process in processes:
        pid = getattr(process, "pid", None)
        if pid:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(2.0)  # reaped: billiard skips the pipes of exited children
    if pool is not None:
        pool.terminate()


class Drain:
    """One worker's graceful stop; ``wrap`` it around Celery's shutdown signal handlers."""

    def __init__(self, app: Celery, consumer: Any, on_start: Callable[[int], None]) -> None:
        self.app = app
        self.consumer = consumer
        self.on_start = on_start
        self.celery_handlers: dict[int, SignalHandler] = {}
        self.signum: int | None = None
        self.deadline = 0.0
        self.began = 0.0
        self.finished = False
        self._consuming_stopped = False
        self._watchdog: threading.Timer | None = None

    @property
    def window(self) -> float:
        return float(self.app.conf.worker_soft_shutdown_timeout or 0)

    def wrap(self, signum: int) -> None:
        celery_handler = signal.getsignal(signum)
        if callable(celery_handler):
            self.celery_handlers[signum] = celery_handler
            signal.signal(signum, self.on_signal)

    def on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            logger.warning("%s during the drain: cancelling running tasks now", signal.Signals(signum).name)
            self.finish()
            return
        self.signum = signum
        self.began = time.monotonic()
        self.deadline = self.began + self.window
        self.on_start(signum)
        if not self.app.conf.get(EARLY_END_SETTING, True):
            self.finish(wait=True)  # Celery's own soft shutdown: the whole window, in the handler
            return
        # check() runs from the event loop every CHECK_INTERVAL (DrainStep) and ends the drain.
        self._watchdog = threading.Timer(self.window + 1.0, os.kill, (os.getpid(), signum))
        self._watchdog.daemon = True
        self._watchdog.start()

    def check(self) -> None:
        """Event-loop tick: stop consuming, then end the drain when nothing is held or time is up."""
        if self.signum is None or self.finished:
            return
        if not self._consuming_stopped:
            self._consuming_stopped = True
            task_consumer = getattr(self.consumer, "task_consumer", None)
            if task_consumer is not None:
                try:
                    task_consumer.cancel()
                except Exception:  # a broken connection: Celery's cold shutdown copes with it
                    logger.debug("could not cancel the task consumer", exc_info=True)
        held = held_requests()
        if held and time.monotonic() < self.deadline:
            return
        if held:
            logger.warning("drain window (%.0fs) closed, %d task(s) held: requeuing them", self.window, held)
        else:
            logger.info("drained in %.1fs: nothing left running", time.monotonic() - self.began)
        finish = partial(self.finish, idle=not held)
        # Acknowledgements may still sit in the event loop's call-soon queue: run after them.
        hub = getattr(self.consumer, "hub", None)
        if hub is not None:
            hub.call_soon(finish)
        else:
            finish()

    def finish(self, wait: bool = False, idle: bool = False) -> None:
        """Hand over to Celery's shutdown: cancel (and requeue) whatever still runs, then exit."""
        if self.finished:
            return
        self.finished = True
        if idle and held_requests() == 0:
            stop_idle_pool(self.consumer)
        if self._watchdog is not None:
            self._watchdog.cancel()
        if not wait:
            # The drain did the waiting; Celery's handler must not sleep again.
            self.app.conf.worker_soft_shutdown_timeout = 0
        signum = self.signum if self.signum is not None else signal.SIGTERM
        handler = self.celery_handlers.get(signum) or self.celery_handlers.get(signal.SIGQUIT)
        if handler is not None:
            handler(signum, None)
