"""Redis accounting against a real redis-server, with messages put there by real Celery/kombu publishers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from functools import partial

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Queue

from celery_fleet.exporter.collectors import UnstampedAges
from celery_fleet.exporter.redis_accounting import (
    PRIORITY_SEP,
    QueueStats,
    held_counts,
    published_at,
    queue_stats,
    read_queues,
)
from celery_fleet.headers import PUBLISHED_AT_HEADER
from celery_fleet.local.redis_server import RedisServer

Stats = Callable[..., dict[str, QueueStats]]

TRANSPORT = {
    "priority_steps": list(range(10)),
    "queue_order_strategy": "priority",
    "visibility_timeout": 3600,
}


@pytest.fixture
def app(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[Celery]:
    celery = Celery("accounting-test", broker=redis_server.url, set_as_current=False)
    celery.conf.update(
        broker_transport_options=TRANSPORT, task_serializer="json", task_create_missing_queues=True
    )
    yield celery
    celery.close()


@pytest.fixture(params=["script", "pipeline"])
def queue_stats_of(request: pytest.FixtureRequest) -> Stats:
    """Both ways of reading: one EVAL (default) and the pipeline used where scripting is not allowed."""
    return partial(queue_stats, use_script=request.param == "script")


@pytest.fixture
def connection(redis_server: RedisServer) -> Iterator[Connection]:
    with Connection(redis_server.url, transport_options=TRANSPORT) as conn:
        yield conn


def send(app: Celery, queue: str, *, priority: int = 0, stamp: float | None = None) -> None:
    headers = {PUBLISHED_AT_HEADER: stamp} if stamp is not None else {}
    app.send_task("jobs.tasks.noop", queue=queue, priority=priority, headers=headers)


def take(connection: Connection, queue: str):
    """Deliver one message unacked: kombu moves it into the unacked hash, as a worker's prefetch does."""
    message = (
        Queue(queue, Exchange(queue), routing_key=queue).bind(connection.default_channel).get(no_ack=False)
    )
    assert message is not None, f"nothing to take from {queue}"
    return message


def test_waiting_counts_every_priority_list(
    app: Celery, redis_client: redis.Redis, queue_stats_of: Stats
) -> None:
    for priority in range(10):
        send(app, "default", priority=priority, stamp=time.time())
    send(app, "exports", stamp=time.time())
    send(app, "exports", priority=9, stamp=time.time())

    stats = queue_stats_of(redis_client, ["default", "exports"])

    assert stats["default"].waiting == 10
    assert dict(stats["default"].waiting_by_priority) == dict.fromkeys(range(10), 1)
    assert stats["exports"].waiting == 2
    assert dict(stats["exports"].waiting_by_priority) == {0: 1, 9: 1}
    # What an LLEN of the queue's name alone (celery-exporter, KEDA) sees:
    assert redis_client.llen("default") == 1
    assert redis_client.llen(f"default{PRIORITY_SEP}9") == 1


def test_default_kombu_steps_are_counted_too(
    redis_server: RedisServer, redis_client: redis.Redis, queue_stats_of: Stats
) -> None:
    """kombu's default steps (0, 3, 6, 9) are a subset of what is read."""
    celery = Celery("default-steps", broker=redis_server.url, set_as_current=False)
    celery.conf.broker_transport_options = {"queue_order_strategy": "priority"}
    try:
        for priority in (0, 2, 5, 8):  # folded into 0, 0, 3, 6
            celery.send_task("jobs.tasks.noop", queue="default", priority=priority)
    finally:
        celery.close()
    stats = queue_stats_of(redis_client, ["default"])["default"]
    assert stats.waiting == 4
    assert dict(stats.waiting_by_priority) == {0: 2, 3: 1, 6: 1}


def test_held_messages_come_from_the_unacked_hash(
    app: Celery, connection: Connection, redis_client: redis.Redis, queue_stats_of: Stats
) -> None:
    for _ in range(3):
        send(app, "default", stamp=time.time())
    send(app, "exports", stamp=time.time())
    first, second = take(connection, "default"), take(connection, "default")
    take(connection, "exports")

    stats = queue_stats_of(redis_client, ["default", "exports", "periodic"])
    assert (stats["default"].waiting, stats["default"].held, stats["default"].backlog) == (1, 2, 3)
    assert (stats["exports"].waiting, stats["exports"].held) == (0, 1)
    assert stats["exports"].backlog == 1  # a busy worker keeps the backlog above zero
    assert stats["periodic"] == QueueStats(waiting=0, held=0, oldest_age_seconds=None)

    first.ack()
    assert queue_stats_of(redis_client, ["default"])["default"].held == 1
    second.reject(requeue=True)  # back to the list, out of the hash
    after = queue_stats_of(redis_client, ["default"])["default"]
    assert (after.waiting, after.held) == (2, 0)


def test_held_messages_of_a_custom_exchange_map_through_the_binding_table(
    connection: Connection, redis_client: redis.Redis, queue_stats_of: Stats
) -> None:
    exchange = Exchange("jobs", type="direct")
    bound = Queue("reports", exchange, routing_key="work.reports")
    with connection.Producer() as producer:
        producer.publish({"x": 1}, exchange=exchange, routing_key="work.reports", declare=[bound])
    message = bound.bind(connection.default_channel).get(no_ack=False)
    assert message is not None

    held = held_counts(redis_client, ["reports", "default"])
    assert held.per_queue == {"reports": 1, "default": 0}
    assert held.total == 1
    assert queue_stats_of(redis_client, ["reports"])["reports"].held == 1
    message.ack()


def test_held_reading_is_capped(app: Celery, connection: Connection, redis_client: redis.Redis) -> None:
    for _ in range(300):
        send(app, "default", stamp=time.time())
    for _ in range(300):
        take(connection, "default")

    full = held_counts(redis_client, ["default"])
    assert (full.per_queue["default"], full.truncated) == (300, False)
    capped = held_counts(redis_client, ["default"], held_limit=100, scan_count=50)
    assert capped.truncated
    assert 100 <= capped.total < 300
    # One round trip reads all 300; over the limit the scrape falls back to the capped scan.
    stats, held, _ = read_queues(redis_client, ["default"], held_limit=1000)
    assert (stats["default"].held, held.truncated) == (300, False)
    stats, held, _ = read_queues(redis_client, ["default"], held_limit=100)
    assert held.truncated
    assert 100 <= stats["default"].held < 300


def test_oldest_age_reads_the_end_workers_take_next(
    app: Celery, connection: Connection, redis_client: redis.Redis, queue_stats_of: Stats
) -> None:
    now = time.time()
    for age in (300.0, 200.0, 100.0):  # published oldest first
        send(app, "default", stamp=now - age)

    assert queue_stats_of(redis_client, ["default"], now=now)["default"].oldest_age_seconds == pytest.approx(
        300.0
    )
    oldest = take(connection, "default")  # a worker takes the oldest one ...
    assert json.loads(oldest.body)[0] == []  # (a real Celery message: args, kwargs, embed)
    assert queue_stats_of(redis_client, ["default"], now=now)["default"].oldest_age_seconds == pytest.approx(
        200.0
    )
    oldest.reject(requeue=True)  # ... and a requeue puts it back at the far end: still the oldest
    assert queue_stats_of(redis_client, ["default"], now=now)["default"].oldest_age_seconds == pytest.approx(
        300.0
    )


def test_oldest_age_is_the_oldest_over_all_priorities(
    app: Celery, redis_client: redis.Redis, queue_stats_of: Stats
) -> None:
    now = time.time()
    send(app, "default", priority=0, stamp=now - 10)
    send(app, "default", priority=9, stamp=now - 500)
    send(app, "default", priority=3, stamp=now - 50)
    assert queue_stats_of(redis_client, ["default"], now=now)["default"].oldest_age_seconds == pytest.approx(
        500.0
    )


def test_messages_without_a_stamp_do_not_break_it(
    app: Celery, connection: Connection, redis_client: redis.Redis, queue_stats_of: Stats
) -> None:
    queue = Queue("default", Exchange("default"), routing_key="default")
    with connection.Producer() as producer:  # a plain kombu publisher: no celery-fleet stamp
        producer.publish({"hello": "world"}, exchange=queue.exchange, routing_key="default", declare=[queue])
    redis_client.lpush("default", b"\xff not json at all")
    now = time.time()
    send(app, "default", priority=9, stamp=now - 42)

    stats = queue_stats_of(redis_client, ["default"], now=now)["default"]
    assert stats.waiting == 3
    assert stats.unstamped_oldest
    assert stats.oldest_age_seconds == pytest.approx(42.0)  # from the stamped list

    tracker = UnstampedAges()
    assert tracker.age("default", stats, now) == pytest.approx(42.0)
    assert tracker.age("default", stats, now + 100) == pytest.approx(100.0)  # seen waiting for 100 s
    assert published_at(b"\xff not json at all") is None


def test_empty_unknown_and_foreign_keys(
    app: Celery, connection: Connection, redis_client: redis.Redis, queue_stats_of: Stats
) -> None:
    send(app, "default", stamp=time.time())
    take(connection, "default").ack()
    redis_client.set("not-a-list", "a string where a queue would be")

    stats = queue_stats_of(redis_client, ["default", "never-declared", "not-a-list"])
    empty = QueueStats(waiting=0, held=0, oldest_age_seconds=None)
    assert stats == {"default": empty, "never-declared": empty, "not-a-list": empty}
    assert queue_stats_of(redis_client, []) == {}
