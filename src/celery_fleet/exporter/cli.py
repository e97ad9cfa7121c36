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

from celery_fleet.exporter.amqp_accounting import AmqpAccounting, is_amqp_url
from celery_fleet.exporter.collectors import (
    AmqpQueueCollector,
    RedisQueueCollector,
    ScrapeHealth,
    WorkerCollector,
)
from celery_fleet.exporter.events import EventMonitor, TaskMetrics, WorkerProber, WorkerTable
from celery_fleet.exporter.server import ExporterServer, exporter_app

logger = logging.getLogger("celery_fleet.exporter")

DEFAULT_PORT = 9808
#: Celery's own default queue: what an app that names no queue sends to.
CELERY_DEFAULT_QUEUE = "celery"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


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
    worker_labels: bool = False
    key_prefix: str = ""
    events: bool = True
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=False))
    health: ScrapeHealth = field(default_factory=ScrapeHealth)
    workers: WorkerTable = field(default_factory=WorkerTable)
    _parts: list[Any] = field(default_factory=list)

    def known_queues(self) -> list[str]:
        """Configured queues first, then any a live worker consumes (minus Celery's own control queues)."""
        learned = [
            q
            for w in self.workers.snapshot()
            for q in (w.queues or ())
            if not q.endswith((".pidbox", ".celeryev")) and not q.startswith("celeryev.")
        ]
        return list(dict.fromkeys([*self.queues, *learned]))

    def build(self) -> Exporter:
        if is_amqp_url(self.broker_url):
            self.amqp = AmqpAccounting(self.broker_url)
            self.registry.register(AmqpQueueCollector(self.amqp, self.known_queues, health=self.health))
        else:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            # A scrape must answer within Prometheus's scrape timeout (10 s by default), even
            # when Redis hangs: at most two 3 s tries, then the scrape reports broker_up 0.
            self.redis = redis.Redis.from_url(
                self.broker_url,
                socket_timeout=3,
                socket_connect_timeout=3,
                health_check_interval=25,
                retry=Retry(NoBackoff(), 1),
            )
            self.registry.register(
                RedisQueueCollector(
                    self.redis, self.known_queues, key_prefix=self.key_prefix, health=self.health
                )
            )
        self.registry.register(
            WorkerCollector(self.workers, self.known_queues, worker_labels=self.worker_labels)
        )
        self.tasks = TaskMetrics(self.registry)
        return self

    def healthz(self) -> tuple[bool, dict[str, Any]]:
        monitor = getattr(self, "monitor", None)
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
            from celery import Celery

            app = Celery("celery-fleet-exporter", broker=self.broker_url, set_as_current=False)
            app.conf.update(
                broker_connection_retry_on_startup=True,
                # The exporter's event queue on RabbitMQ goes away soon after the exporter does.
                event_queue_expires=60.0,
                event_queue_ttl=5.0,
            )
            self.prober = WorkerProber(app, self.workers)
            self.monitor = EventMonitor(app, self.tasks, self.workers, self.prober)
            self.prober.start()
            self.monitor.start()
            self._parts += [self.monitor, self.prober]
        self.server = ExporterServer(exporter_app(self.registry, self.healthz), self.host, self.port).start()
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
    "--worker-labels/--no-worker-labels",
    envvar="CELERY_FLEET_EXPORTER_WORKER_LABELS",
    default=False,
    show_default=True,
    help="Per-worker celery_worker_up/celery_worker_tasks_active series with a hostname label.",
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
    worker_labels: bool,
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
        worker_labels=worker_labels,
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
