"""RabbitMQ accounting and the exporter's /metrics against a real rabbitmq-server started for this module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from kombu import Connection, Exchange, Queue

from celery_fleet.exporter.amqp_accounting import AmqpAccounting
from celery_fleet.local.processes import ManagedProcess, file_sink
from celery_fleet.local.redis_server import RedisServer
from celery_fleet.local.waiting import free_port, wait_until
from celery_fleet.task_metrics import Batch, Flusher, counter_field
from tests.support.rabbitmq import RabbitMQServer, skip_unless_installed


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    skip_unless_installed()
    server = RabbitMQServer(data_dir=tmp_path_factory.mktemp("rabbitmq"))
    try:
        server.start()
    except Exception as exc:
        server.stop()
        pytest.skip(f"rabbitmq-server could not start here: {exc}")
    yield server
    server.stop()


def publish(url: str, queue: str, count: int) -> None:
    declared = Queue(queue, Exchange(queue), routing_key=queue)
    with Connection(url) as conn, conn.Producer() as producer:
        for i in range(count):
            producer.publish({"i": i}, exchange=declared.exchange, routing_key=queue, declare=[declared])


def test_passive_declare_counts_messages_and_consumers(rabbitmq: RabbitMQServer) -> None:
    publish(rabbitmq.url, "amqp-default", 5)
    accounting = AmqpAccounting(rabbitmq.url)
    try:
        stats = accounting.queue_stats(["amqp-default", "amqp-missing", "amqp-default"])
        assert (stats["amqp-default"].messages, stats["amqp-default"].consumers) == (5, 0)
        assert stats["amqp-missing"].exists is False
        assert stats["amqp-missing"].messages == 0

        with Connection(rabbitmq.url) as conn:
            queue = Queue("amqp-default", Exchange("amqp-default"), routing_key="amqp-default")
            with conn.Consumer(queue, callbacks=[], prefetch_count=1):
                consumed = accounting.queue_stats(["amqp-default"])["amqp-default"]
                assert consumed.consumers == 1
        # The missing queue was not created by asking about it.
        assert accounting.queue_stats(["amqp-missing"])["amqp-missing"].exists is False
    finally:
        accounting.close()


def test_exporter_serves_queue_length_from_rabbitmq(
    rabbitmq: RabbitMQServer, redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    publish(rabbitmq.url, "amqp-exports", 7)
    # A RabbitMQ fleet's workers write their task totals to a Redis of its own.
    batch = Batch()
    batch.count(counter_field("succeeded", "t.add", "amqp-exports"), 4)
    assert Flusher(batch, redis_server.url, "worker:celery@pod-r").flush()
    port = free_port()
    exporter = ManagedProcess(
        "exporter",
        [sys.executable, "-m", "celery_fleet.cli", "exporter", "--broker-url", rabbitmq.url,
         "--queues", "amqp-exports,amqp-empty", "--port", str(port), "--host", "127.0.0.1",
         "--metrics-url", redis_server.url],
        sink=file_sink(tmp_path / "exporter.log"),
    ).start()  # fmt: skip
    try:

        def scrape() -> str | None:
            if exporter.returncode() is not None:
                raise RuntimeError((tmp_path / "exporter.log").read_text())
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            return text if 'celery_queue_length{queue_name="amqp-exports"}' in text else None

        text = wait_until(scrape, timeout=60, what="the exporter to report amqp-exports")
        assert 'celery_queue_length{queue_name="amqp-exports"} 7.0' in text
        assert 'celery_queue_length{queue_name="amqp-empty"} 0.0' in text
        assert 'celery_active_consumer_count{queue_name="amqp-exports"} 0.0' in text
        assert "celery_fleet_broker_up 1.0" in text
        succeeded = 'celery_task_succeeded_total{hostname="pod-r",name="t.add",queue_name="amqp-exports"} 4.0'
        assert succeeded in text
        # Redis-only series are not invented for RabbitMQ.
        assert "celery_fleet_queue_oldest_age_seconds" not in text
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status_code == 200
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["events_connected"],
            timeout=60,
            what="the exporter to listen to events on RabbitMQ",
        )
    finally:
        exporter.stop(timeout=20)
