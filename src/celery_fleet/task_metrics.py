"""Task metrics counted where the tasks are, handed to Redis in batches: no task events needed.

celery-exporter counts tasks from Celery's task events: three or more broker publishes per task
(``task-sent``, ``-received``, ``-started``, ``-succeeded``...), each its own round trip, which
halves a small task's throughput.  Here every process counts for itself and writes what it
counted once per second, one ``MULTI`` pipeline of ``HINCRBY`` per process; the exporter reads
the totals at scrape time (``celery_fleet.exporter.task_series``).

Where the numbers come from (the same places Celery's events come from, so the semantics are
celery-exporter's):

* **workers** — the worker's main process: Celery hands every task event of a worker to its
  event dispatcher, which with task events off drops them; :class:`RecordingDispatcher` counts
  them first (received, started, succeeded, failed with the exception's class, retried,
  revoked, rejected), which also covers failures only the main process sees (a pool process
  killed by the OOM killer or a hard time limit).  The runtime of succeeded tasks is the
  event's ``runtime``; the **queue wait** is started - max(published, ETA): time spent waiting
  in the queue, a deliberate countdown/ETA (and retry backoff) excluded, from the publish
  stamp (``x-fleet-published-at``) every celery-fleet publisher sets;
* **publishers** — ``sent``, counted by whichever process publishes (web, beat, a worker's
  pool process applying a follow-up): on a Redis broker inside the publish itself, in the
  same round trip as the message (``celery_fleet.publish``), so the count lives where the
  message went; on other brokers on ``after_task_publish``, in batches, to the metrics Redis.

Storage, in the metrics Redis (the broker by default, ``CELERY_FLEET_METRICS_URL`` otherwise):
one hash per *source* — ``worker:<node name>`` for a worker, ``host:<hostname>`` for the
publishers of one host (their processes add to the same hash, so a process that exits loses at
most its last second) — under :data:`KEY_PREFIX`, and the sorted set :data:`SOURCES_KEY` of
sources scored by their last write.  A source that stays quiet still refreshes its score every
:data:`KEEPALIVE_SECONDS`, so the exporter can drop the series of gone workers after a purge
delay, as celery-exporter does; hashes expire :data:`SOURCE_TTL` after their last write.
Fields (see :func:`counter_field`, :func:`bucket_field`, :func:`sum_field`) hold totals that
only grow; a flush that fails is retried with the next one, so nothing is counted twice unless
Redis applied a batch whose reply was lost.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import os
import re
import socket
import threading
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from celery import Celery, bootsteps
from celery.events.dispatcher import EventDispatcher
from celery.signals import after_task_publish, task_received, worker_process_shutdown

from celery_fleet.headers import PUBLISHED_AT_HEADER

logger = logging.getLogger("celery_fleet.task_metrics")

KEY_PREFIX = "celery_fleet:metrics:"
SOURCES_KEY = f"{KEY_PREFIX}sources"
WORKER_SOURCE = "worker:"
HOST_SOURCE = "host:"
FLUSH_SECONDS = 1.0
KEEPALIVE_SECONDS = 60.0
SOURCE_TTL = 24 * 3600
SEP = "\x1f"  # ASCII unit separator: cannot occur in task, queue or exception names
UNKNOWN = "unknown"

#: celery-exporter's task counters (``celery_task_<event>_total``), in its order.
COUNTER_EVENTS = ("sent", "received", "started", "succeeded", "failed", "retried", "revoked", "rejected")
WORKER_EVENTS = COUNTER_EVENTS[1:]
_FINAL_EVENTS = {"succeeded", "failed", "retried", "revoked", "rejected"}
#: Runtime buckets reach long tasks: 10 ms up to an hour.
RUNTIME_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
    3600.0, float("inf"),
)  # fmt: skip
#: celery-exporter's ``--queue-wait-buckets`` default: near zero when healthy, minutes in a backlog.
WAIT_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, float("inf"),
)  # fmt: skip
HISTOGRAMS: dict[str, tuple[float, ...]] = {"runtime": RUNTIME_BUCKETS, "queue_wait_time": WAIT_BUCKETS}

#: celery-exporter's ``hostname`` of ``task-sent``: the publisher's host.
_HOSTNAME = socket.gethostname()
_EXCEPTION_CLASS = re.compile(r"^([A-Za-z_][\w.]*)\(")


def exception_class(text: Any) -> str:
    """``"ValueError('bad')"`` (a task-failed event's ``exception``) -> ``ValueError``."""
    match = _EXCEPTION_CLASS.match(str(text or ""))
    return match.group(1) if match else "UnknownException"


def counter_field(event: str, name: str, queue: str, exception: str = "") -> str:
    return SEP.join(("c", event, name, queue, exception))


def bucket_field(metric: str, name: str, queue: str, index: int) -> str:
    """Observations in bucket ``index`` of ``HISTOGRAMS[metric]`` (not cumulative)."""
    return SEP.join(("b", metric, name, queue, str(index)))


def sum_field(metric: str, name: str, queue: str) -> str:
    return SEP.join(("s", metric, name, queue))


def source_key(source: str) -> str:
    return f"{KEY_PREFIX}{source}"


def metrics_url(app: Celery) -> str | None:
    """Where task metrics go: ``fleet_metrics_url`` / ``CELERY_FLEET_METRICS_URL``, else a Redis broker."""
    url = app.conf.get("fleet_metrics_url") or os.environ.get("CELERY_FLEET_METRICS_URL")
    if url:
        return str(url)
    broker = str(app.conf.broker_url or "")
    return broker if _is_redis(broker) else None


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://", "redis+socket://"))


def enabled(app: Celery) -> bool:
    setting = app.conf.get("fleet_task_metrics")
    if setting is None:
        setting = os.environ.get("CELERY_FLEET_TASK_METRICS", "1").lower() not in ("0", "false", "no", "off")
    return bool(setting)


class Batch:
    """Deltas counted since the last flush (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ints: Counter[str] = Counter()
        self._floats: defaultdict[str, float] = defaultdict(float)
        self._histogram_fields: dict[tuple[str, str, str], tuple[list[str], str]] = {}

    def count(self, field: str, n: int = 1) -> None:
        with self._lock:
            self._ints[field] += n  # n = 0 makes a series visible at 0

    def observe(self, metric: str, name: str, queue: str, seconds: float) -> None:
        fields = self._histogram_fields.get((metric, name, queue))
        if fields is None:
            buckets = [bucket_field(metric, name, queue, i) for i in range(len(HISTOGRAMS[metric]))]
            fields = self._histogram_fields[(metric, name, queue)] = (buckets, sum_field(metric, name, queue))
        index = bisect.bisect_left(HISTOGRAMS[metric], seconds)  # first bucket with le >= seconds
        with self._lock:
            self._ints[fields[0][index]] += 1
            self._floats[fields[1]] += seconds

    def take(self) -> tuple[Counter[str], dict[str, float]]:
        with self._lock:
            taken = self._ints, dict(self._floats)
            self._ints, self._floats = Counter(), defaultdict(float)
            return taken

    def give_back(self, ints: Mapping[str, int], floats: Mapping[str, float]) -> None:
        """A flush failed: keep its deltas for the next one."""
        with self._lock:
            for field, n in ints.items():
                self._ints[field] += n
            for field, x in floats.items():
                self._floats[field] += x


class Flusher:
    """Writes a :class:`Batch` to the metrics Redis once per ``interval``, in one ``MULTI`` pipeline."""

    def __init__(self, batch: Batch, url: str, source: str, *, interval: float = FLUSH_SECONDS) -> None:
        self.batch, self.url, self.source, self.interval = batch, url, source, interval
        self.key = source_key(source)
        self._client: Any = None
        self._last_write = float("-inf")
        self._failing = False
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="celery-fleet-task-metrics", daemon=True)

    def start(self) -> Flusher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def _redis(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(
                self.url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=25
            )
        return self._client

    def flush(self) -> bool:
        """Write what was counted (or, when idle, refresh the source every keepalive); False on error."""
        with self._write_lock:
            ints, floats = self.batch.take()
            now = time.time()
            if not ints and not floats and now - self._last_write < KEEPALIVE_SECONDS:
                return True
            try:
                with self._redis().pipeline(transaction=True) as pipe:
                    for field, n in ints.items():
                        pipe.hincrby(self.key, field, n)
                    for field, x in floats.items():
                        pipe.hincrbyfloat(self.key, field, x)
                    pipe.expire(self.key, SOURCE_TTL)
                    pipe.zadd(SOURCES_KEY, {self.source: now})
                    if now - self._last_write >= KEEPALIVE_SECONDS:
                        pipe.zremrangebyscore(SOURCES_KEY, "-inf", now - SOURCE_TTL)
                    pipe.execute()
            except Exception as exc:
                self.batch.give_back(ints, floats)
                if not self._failing:
                    logger.warning("could not write task metrics to %s (%s); retrying", self.source, exc)
                self._failing = True
                return False
            if self._failing:
                logger.info("task metrics of %s written again", self.source)
            self._failing = False
            self._last_write = now
            return True


class _Task(NamedTuple):
    name: str
    queue: str
    published_at: float | None
    eta: float | None


class TaskRecorder:
    """Counts one worker's task events, as celery-exporter counts them.

    Called from the worker's main thread only (its dispatcher and ``task_received`` both run
    there), so it keeps no lock of its own; :class:`Batch` locks against the flusher thread.
    """

    def __init__(self, batch: Batch, *, max_tracked: int = 10_000) -> None:
        self.batch = batch
        self._tasks: OrderedDict[str, _Task] = OrderedDict()
        self._fields: dict[tuple[str, str, str], str] = {}  # (event, name, queue) -> counter field
        self._max_tracked = max_tracked

    def on_received(self, request: Any) -> None:
        """``task_received``: remember what later events of this task need (they carry only its id)."""
        delivery = request.delivery_info or {}
        stamp = (request.request_dict or {}).get(PUBLISHED_AT_HEADER)
        eta = request.eta
        task = _Task(
            name=str(request.name or UNKNOWN),
            queue=str(delivery.get("routing_key") or UNKNOWN),
            published_at=float(stamp) if isinstance(stamp, int | float) and stamp > 0 else None,
            eta=eta.timestamp() if isinstance(eta, datetime) else None,
        )
        tasks = self._tasks
        tasks[str(request.id)] = task
        if len(tasks) > self._max_tracked:  # events that never came (a lost connection): forget
            tasks.popitem(last=False)

    def on_event(self, event_type: str, fields: Mapping[str, Any]) -> None:
        """One ``task-*`` event as the worker's dispatcher gets it."""
        event = event_type.removeprefix("task-")
        if event not in WORKER_EVENTS:
            return
        uuid = str(fields.get("uuid", ""))
        task = self._tasks.pop(uuid, None) if event in _FINAL_EVENTS else self._tasks.get(uuid)
        if task is None:
            task = _Task(str(fields.get("name") or UNKNOWN), UNKNOWN, None, None)
        name, queue = task.name, task.queue
        field = self._fields.get((event, name, queue))
        if field is None:
            if (WORKER_EVENTS[0], name, queue) not in self._fields:
                # Every counter of a task visible at 0 from its first event, as celery-exporter
                # does, so increase() sees the first success or failure.
                for other in WORKER_EVENTS:
                    self.batch.count(counter_field(other, name, queue), 0)
                    self._fields[(other, name, queue)] = counter_field(other, name, queue)
            field = self._fields[(event, name, queue)]
        if event == "failed":
            self.batch.count(counter_field(event, name, queue, exception_class(fields.get("exception"))))
        else:
            self.batch.count(field)
        if event == "started" and task.published_at is not None:
            began = max(task.published_at, task.eta or 0.0)
            # Clock skew between publisher and worker can make it negative.
            self.batch.observe("queue_wait_time", name, queue, max(0.0, time.time() - began))
        elif event == "succeeded":
            runtime = fields.get("runtime")
            if isinstance(runtime, int | float) and runtime >= 0:
                self.batch.observe("runtime", name, queue, float(runtime))


class RecordingDispatcher(EventDispatcher):
    """Celery's event dispatcher, which also hands a worker's task events to its recorder.

    The worker sends every task event through its dispatcher, which drops them when task
    events are off: the recorder sees them all the same.  Installed as ``app.events``'s
    dispatcher class; only the worker's own dispatcher gets a recorder (:class:`TaskMetricsStep`).
    """

    recorder: TaskRecorder | None = None

    def send(self, type: str, *args: Any, **fields: Any) -> Any:
        recorder = self.recorder
        if recorder is not None and type[:5] == "task-":
            try:
                recorder.on_event(type, fields)
            except Exception:  # metrics must never fail a task's bookkeeping
                logger.exception("could not count %s", type)
        return super().send(type, *args, **fields)


class TaskMetricsStep(bootsteps.StartStopStep):
    """Consumer bootstep: attaches the worker's recorder to its dispatcher and flushes its batch."""

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        app = parent.app
        self.url = metrics_url(app) if enabled(app) else None
        self.batch = Batch()
        self.recorder = TaskRecorder(self.batch)
        self.flusher: Flusher | None = None
        if enabled(app) and self.url is None:
            logger.warning(
                "no Redis for task metrics: set CELERY_FLEET_METRICS_URL (the broker is not Redis)"
            )

    def start(self, parent: Any) -> None:
        if self.url is None:
            return
        if self.flusher is None:  # started here, after the pool forked its processes
            source = f"{WORKER_SOURCE}{parent.hostname}"
            self.flusher = Flusher(self.batch, self.url, source).start()
            _worker_recorders[id(parent.app)] = self.recorder
        # The Events step makes a new dispatcher on every (re)connect: attach to each.
        dispatcher = parent.event_dispatcher
        if isinstance(dispatcher, RecordingDispatcher):
            dispatcher.recorder = self.recorder
        else:
            logger.warning("the worker's event dispatcher is %s: task metrics are off", type(dispatcher))

    def shutdown(self, parent: Any) -> None:
        _worker_recorders.pop(id(parent.app), None)
        if self.flusher is not None:
            self.flusher.stop()


#: id(app) -> its worker's recorder (a worker's main process runs one consumer).
_worker_recorders: dict[int, TaskRecorder] = {}


def _on_task_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    recorder = _worker_recorders.get(id(getattr(sender, "app", None)))
    if recorder is not None and request is not None:
        recorder.on_received(request)


class _Publisher:
    """This process's ``sent`` counts (rebuilt in a forked child: threads do not survive a fork)."""

    def __init__(self, url: str) -> None:
        self.batch = Batch()
        self.flusher = Flusher(self.batch, url, f"{HOST_SOURCE}{_HOSTNAME}").start()


@dataclass
class _PublishState:
    """The publish hook's state: the first installed app's settings, this process's publisher."""

    app: Celery | None = None
    #: Counting ``sent`` at all (``fleet_task_metrics``), read at the first publish.
    counting: bool | None = None
    #: The metrics Redis of the batch path (a broker that is not Redis); None: not batched.
    url: str | None = None
    publisher: _Publisher | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def resolve(self) -> None:
        if self.counting is None and self.app is not None:
            # Read once, at the first publish: the settings are loaded by then.
            self.counting = enabled(self.app)
            broker_is_redis = _is_redis(str(self.app.conf.broker_url or ""))
            self.url = metrics_url(self.app) if self.counting and not broker_is_redis else None


_publish = _PublishState()


def _forget_publisher_after_fork() -> None:
    _publish.publisher = None
    _publish.lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_publisher_after_fork)


def _publish_batch() -> Batch | None:
    publisher = _publish.publisher
    if publisher is None:
        with _publish.lock:
            _publish.resolve()
            if _publish.url is None:
                return None
            publisher = _publish.publisher = _publish.publisher or _Publisher(_publish.url)
    return publisher.batch


@dataclass(frozen=True)
class SentCounting:
    """One task's ``sent`` count on a Redis broker, written by the publish itself."""

    name: str
    source: str

    def script_args(self) -> list[Any]:
        """What ``publish.PUBLISH_SCRIPT`` needs after the message (see its ARGV)."""
        prefix = SEP.join(("c", "sent", self.name, ""))
        return [source_key(self.source), prefix, SEP, SOURCES_KEY, self.source, time.time(), SOURCE_TTL]

    def write(self, client: Any, queue: str) -> None:
        """The same, as a command of its own (for a publish that went kombu's own way)."""
        with client.pipeline(transaction=True) as pipe:
            pipe.hincrby(source_key(self.source), counter_field("sent", self.name, queue), 1)
            pipe.expire(source_key(self.source), SOURCE_TTL)
            pipe.zadd(SOURCES_KEY, {self.source: time.time()})
            pipe.execute()


def sent_on_broker(message: Mapping[str, Any]) -> SentCounting | None:
    """What the publish of this kombu message must count, if it is a Celery task and counting is on."""
    if _publish.counting is None:
        with _publish.lock:
            _publish.resolve()
    if not _publish.counting:
        return None
    name = (message.get("headers") or {}).get("task")
    if not isinstance(name, str):
        return None
    return SentCounting(name, f"{HOST_SOURCE}{_HOSTNAME}")


def _on_task_published(sender: Any = None, routing_key: Any = None, **_: Any) -> None:
    batch = _publish_batch()
    if batch is not None and isinstance(sender, str):
        batch.count(counter_field("sent", sender, str(routing_key or UNKNOWN)))


def flush_publishers() -> None:
    """Write this process's unflushed ``sent`` counts now (exit, pool-process shutdown)."""
    if _publish.publisher is not None:
        _publish.publisher.flusher.flush()


def install(app: Celery) -> None:
    """Count this app's tasks where they run and where they are published (``lifecycle.install``).

    Reads no setting here (the app's configuration may not be loaded yet): the worker's step
    and the publish hook read ``fleet_task_metrics`` / ``fleet_metrics_url`` when they run.
    """
    # Before anything creates a dispatcher (``app.events.Dispatcher`` is computed once).
    app.events.dispatcher_cls = f"{__name__}:RecordingDispatcher"  # type: ignore[attr-defined]
    vars(app.events).pop("Dispatcher", None)
    app.steps["consumer"].add(TaskMetricsStep)
    if _publish.app is None:  # the signals are global: connect once per process
        _publish.app = app
        task_received.connect(_on_task_received, weak=False)
        after_task_publish.connect(_on_task_published, weak=False)
        worker_process_shutdown.connect(lambda **_: flush_publishers(), weak=False)
        atexit.register(flush_publishers)
