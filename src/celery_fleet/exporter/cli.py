"""``celery-fleet exporter``: queue, worker and task metrics for Prometheus."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import click
from prometheus_client import CollectorRegistry, disable_created_metrics

from celery_fleet.event_stream import DEFAULT_FORGET_AFTER, EventStream, WorkerTable
from celery_fleet.exporter.amqp_accounting import AmqpAccounting, is_amqp_url
from celery_fleet.exporter.collectors import (
    AmqpQueueCollector,
    RedisQueueCollector,
    ScrapeHealth,
    TaskSeriesCollector,
    TaskSeriesSource,
    WorkerCollector,
)
from celery_fleet.exporter.exposition import CachedExposition
from celery_fleet.exporter.server import ExporterServer, exporter_app
from celery_fleet.exporter.task_series import HostnameLabels
from celery_fleet.exporter.worker_probe import WorkerProber

logger = logging.getLogger("celery_fleet.exporter")

DEFAULT_PORT = 9808
#: Celery's own default queue: what an app that names no queue sends to.
CELERY_DEFAULT_QUEUE = "celery"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
#: A scrape answers within 2 s even when Redis hangs (SIGSTOP, a dead node behind a live
#: socket): one read with this timeout, retried only after a refused or reset connection.
REDIS_TIMEOUT_SECONDS = 1.0


def redis_client(url: str) -> Any:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        # A stale pooled connection fails fast (reset) and gets one retry; a timeout does not.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )


def parse_queues(text: str) -> list[str]:
    queues = list(dict.fromkeys(q.strip() for q in text.split(",") if q.strip()))
    if not queues:
        raise click.BadParameter("give at least one queue name, e.g. default,exports", param_hint="--queues")
    return queues


def check_broker_url(url: str) -> str:
    if not url.startswith(REDIS_SCHEMES) and not is_amqp_url(url):
        raise click.BadParameter(
            f"{url.split('://')[0]!r} brokers are not supported: use redis://, rediss:// or amqp:// "
            "(sentinel:// is not supported yet)",
            param_hint="--broker-url",
        )
    return url


def check_metrics_url(url: str | None) -> str | None:
    if url is not None and not url.startswith(REDIS_SCHEMES):
        raise click.BadParameter("task totals live in Redis: give a redis:// URL", param_hint="--metrics-url")
    return url


def default_queues(celery_app: str | None) -> list[str]:
    """What the project declares (its Celery app loaded here), else Celery's default queue."""
    if celery_app is None:
        return [CELERY_DEFAULT_QUEUE]
    from celery_fleet.project import declared_queues, load_celery_app

    try:
        return declared_queues(load_celery_app(celery_app))
    except Exception as exc:  # the user's import error or settings: say so, name the way out
        raise click.UsageError(
            f"cannot read the queues of {celery_app!r} ({type(exc).__name__}: {exc}); name them with --queues"
        ) from exc


@dataclass
class Exporter:
    """Everything ``celery-fleet exporter`` runs; ``start()`` returns at once, ``stop()`` ends it all."""

    broker_url: str
    queues: Sequence[str]
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    key_prefix: str = ""
    events: bool = True
    #: celery-exporter's ``--purge-offline-worker-metrics``: a gone worker's series stay (at 0)
    #: this long, then disappear with its task series.
    purge_after: float = DEFAULT_FORGET_AFTER
    #: Where workers and publishers write task totals (``CELERY_FLEET_METRICS_URL``); ``None``:
    #: the broker when it is Redis, else no task series.
    metrics_url: str | None = None
    #: Our collectors describe nothing (their names come at scrape time), so ``name[]`` filtering
    #: (``/metrics?name[]=celery_queue_length``) only sees them when they are kept as collectors
    #: without names.
    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=False, support_collectors_without_names=True)
    )
    health: ScrapeHealth = field(default_factory=ScrapeHealth)
    labels: HostnameLabels = field(default_factory=HostnameLabels)
    #: What /metrics renders with: names and labels escaped once, not on every scrape.
    exposition: CachedExposition = field(default_factory=CachedExposition)
    _parts: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workers = WorkerTable(forget_after=self.purge_after)

    def known_queues(self) -> list[str]:
        """Configured queues first, then any a live worker consumes (minus Celery's own control queues)."""
        _, workers = self.workers.snapshot()
        learned = [
            q
            for w in workers
            for q in (w.queues or ())
            if not q.endswith((".pidbox", ".celeryev")) and not q.startswith("celeryev.")
        ]
        return list(dict.fromkeys([*self.queues, *learned]))

    def build(self) -> Exporter:
        tasks = TaskSeriesSource(self.labels, self.purge_after)
        metrics_url = self.metrics_url
        if is_amqp_url(self.broker_url):
            self.amqp = AmqpAccounting(self.broker_url)
            self.registry.register(AmqpQueueCollector(self.amqp, self.known_queues, health=self.health))
        else:
            self.redis = redis_client(self.broker_url)
            on_broker = metrics_url in (None, self.broker_url)
            self.registry.register(
                RedisQueueCollector(
                    self.redis,
                    self.known_queues,
                    key_prefix=self.key_prefix,
                    health=self.health,
                    tasks=tasks if on_broker else None,
                )
            )
            if on_broker:
                metrics_url = None  # read with the queues, in the same round trip
        if metrics_url is not None:
            self.registry.register(TaskSeriesCollector(redis_client(metrics_url), tasks))
        # After the queue collector: the task sources it read refine the hostname labels.
        self.registry.register(WorkerCollector(self.workers, self.known_queues, labels=self.labels))
        return self

    def healthz(self) -> tuple[bool, dict[str, Any]]:
        monitor: EventStream | None = getattr(self, "monitor", None)
        events_ok = monitor is None or monitor.is_alive()
        body = {
            "status": "ok" if events_ok else "event thread died",
            "broker_last_ok": self.health.last_ok,
            "broker_error": self.health.last_error,
            "events_connected": bool(monitor and monitor.connected.is_set()),
            "events_seen": monitor.events_seen if monitor else 0,
            "queues": self.known_queues(),
        }
        return events_ok, body

    def start(self) -> Exporter:
        if self.events:
            self.monitor = EventStream(self.broker_url, [self.workers.on_event], name="exporter-events")
            self.prober = WorkerProber(self.monitor.app, self.workers)
            self.monitor.handlers.append(self.prober.on_event)
            self.prober.start()
            self.monitor.start()
            self._parts += [self.monitor, self.prober]
        self.server = ExporterServer(
            exporter_app(self.registry, self.healthz, self.exposition), self.host, self.port
        ).start()
        return self

    def stop(self) -> None:
        for part in self._parts:
            part.stop()
        server = getattr(self, "server", None)
        if server is not None:
            server.stop()
        amqp = getattr(self, "amqp", None)
        if amqp is not None:
            amqp.close()


@click.command("exporter")
@click.option(
    "--broker-url",
    envvar="CELERY_BROKER_URL",
    default="redis://127.0.0.1:6379/0",
    show_default=True,
    help="Broker to read (CELERY_BROKER_URL): redis://, rediss:// or amqp://.",
)
@click.option(
    "--queues",
    envvar="CELERY_FLEET_QUEUES",
    default=None,
    help="Comma-separated queues to report even with no worker (CELERY_FLEET_QUEUES) "
    "[default: the queues --app declares, else Celery's default queue 'celery'].",
)
@click.option(
    "--app",
    "-A",
    "celery_app",
    envvar="CELERY_FLEET_APP",
    default=None,
    help="The project's Celery app (CELERY_FLEET_APP): its declared queues are the default --queues.",
)
@click.option(
    "--port",
    envvar="CELERY_FLEET_EXPORTER_PORT",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port for /metrics and /healthz (CELERY_FLEET_EXPORTER_PORT).",
)
@click.option(
    "--host",
    envvar="CELERY_FLEET_EXPORTER_HOST",
    default="0.0.0.0",
    show_default=True,
    help="Address to bind.",
)
@click.option(
    "--purge-offline-worker-metrics",
    "purge_after",
    envvar="CELERY_FLEET_EXPORTER_PURGE_OFFLINE_WORKER_METRICS",
    type=click.FloatRange(min=10.0),
    default=DEFAULT_FORGET_AFTER,
    show_default=True,
    help="Seconds a gone worker's series stay (its celery_worker_up at 0), as celery-exporter's option.",
)
@click.option(
    "--metrics-url",
    envvar="CELERY_FLEET_METRICS_URL",
    default=None,
    help="Redis where workers write task totals (CELERY_FLEET_METRICS_URL) [default: the broker, if Redis].",
)
@click.option(
    "--key-prefix",
    envvar="CELERY_FLEET_EXPORTER_KEY_PREFIX",
    default="",
    help="kombu's global_keyprefix transport option, if the fleet sets one (Redis only).",
)
@click.option("--events/--no-events", default=True, show_default=True, help="Listen to Celery events.")
@click.option("--log-level", envvar="LOG_LEVEL", default="INFO", show_default=True)
def exporter(
    broker_url: str,
    queues: str | None,
    celery_app: str | None,
    port: int,
    host: str,
    purge_after: float,
    metrics_url: str | None,
    key_prefix: str,
    events: bool,
    log_level: str,
) -> None:
    """Serve queue backlog, latency, worker and task metrics on /metrics (and /healthz)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # No *_created series: they double the series count and no dashboard reads them.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    running = Exporter(
        broker_url=check_broker_url(broker_url),
        queues=parse_queues(queues) if queues is not None else default_queues(celery_app),
        host=host,
        port=port,
        purge_after=purge_after,
        metrics_url=check_metrics_url(metrics_url),
        key_prefix=key_prefix,
        events=events,
    ).build()
    try:
        running.start()
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info(
        "celery-fleet exporter on http://%s:%d/metrics, queues %s, broker %s",
        host,
        running.server.port,
        ",".join(running.queues),
        _redacted(broker_url),
    )
    while not stop.wait(1.0):
        pass
    began = time.monotonic()
    running.stop()
    logger.info("stopped in %.1fs", time.monotonic() - began)


def _redacted(url: str) -> str:
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))
