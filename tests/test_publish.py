"""One round trip per enqueue: a real Celery publisher against a real Redis, counted by Redis itself."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Queue

from celery_fleet import publish
from celery_fleet.local.redis_server import RedisServer
from celery_fleet.task_metrics import KEY_PREFIX, SEP, SOURCES_KEY
from celery_fleet.transport import TRANSPORT_PATH, bell_key

PRIORITY_SEP = "\x06\x16"


@pytest.fixture
def app(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[Celery]:
    publish.install()
    celery = Celery("publish-test", broker=redis_server.url, set_as_current=False)
    celery.conf.update(
        broker_transport_options={"priority_steps": list(range(10)), "queue_order_strategy": "priority"},
        task_serializer="json",
        task_create_missing_queues=True,
        task_send_sent_event=False,
    )
    yield celery
    celery.close()


def commands(client: redis.Redis) -> dict[str, int]:
    """Commands run, the ones inside scripts included."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


@contextmanager
def monitored(url: str) -> Iterator[list[str]]:
    """Commands clients send (MONITOR; a script's own commands are left out): round trips, unpipelined."""
    seen: list[str] = []
    ready = threading.Event()
    client = redis.Redis.from_url(url)

    def watch() -> None:
        with client.monitor() as monitor:
            ready.set()
            for command in monitor.listen():
                if command["client_type"] == "lua":
                    continue
                if "monitor-stop" in command["command"]:
                    return
                seen.append(command["command"])

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield seen
    finally:
        client.get("monitor-stop")
        thread.join(10)
        seen.pop()  # the GET that stopped it


def sent_totals(client: redis.Redis) -> dict[str, int]:
    totals: dict[str, int] = {}
    for key in client.keys(f"{KEY_PREFIX}host:*"):
        for field, value in client.hgetall(key).items():
            _, event, name, queue, _ = field.decode().split(SEP)
            totals[f"{event} {name} {queue}"] = totals.get(f"{event} {name} {queue}", 0) + int(value)
    return totals


def test_a_task_is_one_round_trip_to_redis(app: Celery, redis_client: redis.Redis) -> None:
    from celery_fleet import task_metrics

    task_metrics._publish.app = app  # count sent as an installed app does
    task_metrics._publish.counting = None
    with app.producer_or_acquire() as producer:
        app.send_task("t.warm", queue="jobs", producer=producer)  # declares the queue once
        redis_client.config_resetstat()
        with monitored(app.conf.broker_url) as requests:
            for i in range(20):
                app.send_task("t.job", args=[i], queue="jobs", priority=i % 10, producer=producer)
        calls = commands(redis_client)
    # One request per publish: an EVALSHA that routes, pushes and counts inside Redis.
    assert len(requests) == 20, requests
    assert all(r.startswith(f"EVALSHA {publish.PUBLISH_SHA}") for r in requests), requests[:2]
    assert calls["lpush"] == calls["hincrby"] == 20
    # ... and the messages are where kombu would have put them: one list per priority step.
    for step in range(10):
        key = "jobs" if step == 0 else f"jobs{PRIORITY_SEP}{step}"
        assert redis_client.llen(key) == (2 if step else 3), key
    body = json.loads(redis_client.lindex("jobs", 0) or b"")
    assert body["headers"]["task"] == "t.job"
    # Celery routes a task to its queue through the default exchange ("": the key names the queue).
    assert body["properties"]["delivery_info"] == {"exchange": "", "routing_key": "jobs"}
    # The sent totals were counted by the same scripts, with the queue name.
    assert sent_totals(redis_client) == {"sent t.warm jobs": 1, "sent t.job jobs": 20}
    assert redis_client.zscore(SOURCES_KEY, f"host:{task_metrics._HOSTNAME}") is not None


def test_on_the_reliable_transport_the_same_round_trip_rings_the_queues_bell(
    app: Celery, redis_client: redis.Redis
) -> None:
    """Without its bell an idle consumer of celery_fleet.transport would find the message only
    at the end of its 1 s wait: the publish script rings it, in the same step as the push."""
    app.conf.broker_transport = TRANSPORT_PATH
    with app.producer_or_acquire() as producer:
        app.send_task("t.warm", queue="jobs", producer=producer)
        redis_client.delete(bell_key("jobs"))
        with monitored(app.conf.broker_url) as requests:
            for i in range(5):
                app.send_task("t.job", args=[i], queue="jobs", producer=producer)
    assert len(requests) == 5, requests
    assert all(r.startswith(f"EVALSHA {publish.PUBLISH_SHA}") for r in requests), requests[:2]
    assert redis_client.llen(bell_key("jobs")) == 5
    assert redis_client.llen("jobs") == 6


def test_published_messages_are_consumed_as_kombu_publishes_them(
    app: Celery, redis_server: RedisServer
) -> None:
    exchange = Exchange("orders", type="direct")
    bound = Queue("orders-eu", exchange, routing_key="eu")
    also = Queue("orders-audit", exchange, routing_key="eu")
    with Connection(redis_server.url) as conn:
        for queue in (bound, also):
            queue.bind(conn.default_channel).declare()
        producer = conn.Producer()
        producer.publish({"n": 1}, exchange=exchange, routing_key="eu", priority=5)
        producer.publish({"n": 2}, exchange="", routing_key="orders-eu")  # the default exchange
        got = [bound.bind(conn.default_channel).get(no_ack=True) for _ in range(2)]
        audit = also.bind(conn.default_channel).get(no_ack=True)
        assert sorted(m.payload["n"] for m in got if m is not None) == [1, 2]
        assert audit is not None
        assert audit.payload == {"n": 1}
        assert bound.bind(conn.default_channel).get(no_ack=True) is None


def test_an_unbound_routing_key_goes_kombus_way(app: Celery, redis_server: RedisServer) -> None:
    """kombu drops a message no queue is bound to (its Redis channel has no dead-letter queue)."""
    client = redis.Redis.from_url(redis_server.url)
    with Connection(redis_server.url) as conn:
        Queue("bound", Exchange("ex"), routing_key="yes").bind(conn.default_channel).declare()
        before = set(client.keys("*"))
        conn.Producer().publish({"n": 1}, exchange="ex", routing_key="no")
        conn.Producer().publish({"n": 2}, exchange="ex", routing_key="yes")
    assert set(client.keys("*")) - before == {b"bound"}
    assert client.llen("bound") == 1
