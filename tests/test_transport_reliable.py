"""celery_fleet.transport against a real Redis: the pop that cannot lose a message, the bells,
the delivery limit and the dead-letter list (kombu consumers; the Celery workers are in
test_poison_messages.py and the fault suites)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue

from celery_fleet import dead_letter
from celery_fleet.local.redis_server import RedisServer
from celery_fleet.local.waiting import wait_until
from celery_fleet.transport import DEAD_LETTER_KEY, DELIVERY_COUNT_HEADER, TRANSPORT_PATH, bell_key
from tests.support.tcp_proxy import TcpProxy

OPTIONS: dict[str, Any] = {
    "socket_timeout": 5,
    "priority_steps": list(range(10)),
    "queue_order_strategy": "priority",
    "visibility_timeout": 2,
    "unacked_restore_throttle": 1,
}


def queue(name: str) -> Queue:
    return Queue(name, Exchange(name), name)


def publish(url: str, name: str, bodies: list[Any], transport: str = TRANSPORT_PATH, **kwargs: Any) -> None:
    with Connection(url, transport=transport, transport_options=OPTIONS) as conn:
        producer = Producer(conn)
        for body in bodies:
            producer.publish(body, exchange=name, routing_key=name, declare=[queue(name)], **kwargs)


def consume(
    url: str, names: list[str], count: int, *, ack: bool = True, timeout: float = 20, **options: Any
) -> list[Any]:
    """Consume ``count`` messages (prefetch 1), acking each unless ``ack`` is false."""
    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append((body, message))
        if ack:
            message.ack()

    conn = Connection(url, transport=TRANSPORT_PATH, transport_options={**OPTIONS, **options})
    with conn, Consumer(conn, [queue(n) for n in names], callbacks=[on_message], prefetch_count=1):
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.5)
    # Unacked messages are restored when the connection closes (kombu's QoS).
    return got


@pytest.fixture
def url(redis_server: RedisServer, redis_client: redis.Redis) -> str:
    return redis_server.url


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[TcpProxy]:
    running = TcpProxy(redis_server.host, redis_server.port).start()
    yield running
    running.stop()


def test_the_restore_sweeps_lock_outlives_a_killed_sweeper_by_seconds_not_minutes(
    url: str, redis_client: redis.Redis
) -> None:
    """A worker killed inside the visibility sweep leaves its lock behind; until the lock expires
    no worker restores anything.  kombu's lock lasts 300 s; the presets' lasts one sweep interval."""
    from celery_fleet.presets import broker_transport_options
    from celery_fleet.timings import RESTORE_SWEEP_SECONDS, Timings

    def sweep_lock_seconds(options: dict[str, Any]) -> float:
        """How long the lock taken by one visibility sweep with ``options`` would outlive its taker."""
        with (
            Connection(url, transport=TRANSPORT_PATH, transport_options=options) as conn,
            redis.Redis.from_url(url).monitor() as monitor,
        ):
            conn.default_channel.qos.restore_visible()  # kombu's sweep, as the worker's loop runs it
            for command in monitor.listen():
                words = command["command"].split()
                if words[:2] == ["SET", "unacked_mutex"]:
                    unit = next(w for w in words[3:] if w in {"PX", "EX"})
                    return float(words[words.index(unit) + 1]) / (1000 if unit == "PX" else 1)
        raise AssertionError("the sweep took no lock: the test tested nothing")

    presets = broker_transport_options(url, Timings())
    assert sweep_lock_seconds({k: v for k, v in presets.items() if k != "unacked_mutex_expire"}) == 300, (
        "kombu's own lock (the five minutes this guards against)"
    )
    assert sweep_lock_seconds(presets) <= RESTORE_SWEEP_SECONDS


@pytest.mark.parametrize("transport", [TRANSPORT_PATH, "redis"], ids=["celery-fleet", "kombu-stock"])
def test_a_pop_reply_lost_in_flight_leaves_the_message_held_not_lost(
    url: str, redis_client: redis.Redis, proxy: TcpProxy, transport: str
) -> None:
    # The body travels base64-encoded; the header is plain JSON the proxy can spot.
    publish(url, "lost", [{"n": 1}], transport=transport, headers={"marker": "reply-lost-in-flight"})
    proxy.cut_on_reply(b"reply-lost-in-flight")
    conn = Connection(proxy.url(), transport=transport, transport_options=OPTIONS)
    try:
        Consumer(conn, [queue("lost")], callbacks=[lambda *_: None], prefetch_count=1).consume()
        deadline = time.monotonic() + 15
        while proxy.cuts == 0 and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.5)
            except TimeoutError:
                pass
            except conn.connection_errors:  # the cut, as the consumer sees it
                break
    finally:
        with contextlib.suppress(Exception):
            conn.release()
    assert proxy.cuts == 1, "the reply carrying the message was never cut: the test tested nothing"
    assert redis_client.llen("lost") == 0, "the server popped the message"
    if transport == "redis":
        # The fault is real: kombu's own transport popped the message and recorded it nowhere.
        assert redis_client.hlen("unacked") == 0
        return
    assert redis_client.hlen("unacked") == 1, "popped and recorded as held in one step"
    # kombu's visibility-timeout sweep puts it back; a healthy consumer then gets it.
    got = consume(url, ["lost"], 1)
    assert [body for body, _ in got] == [{"n": 1}]
    assert got[0][1].headers[DELIVERY_COUNT_HEADER] == 1
    wait_until(lambda: redis_client.hlen("unacked") == 0, timeout=5, what="the ack")


def test_priorities_then_queues_in_order_across_queues(url: str) -> None:
    with Connection(url, transport=TRANSPORT_PATH, transport_options=OPTIONS) as conn:
        producer = Producer(conn)
        for name, priority in (("qb", 3), ("qa", 6), ("qb", 0), ("qa", 3), ("qa", 0)):
            producer.publish(
                {"q": name, "p": priority},
                exchange=name,
                routing_key=name,
                declare=[queue(name)],
                priority=priority,
            )
    got = [body for body, _ in consume(url, ["qa", "qb"], 5)]
    # kombu's order: lower priority number first; within one, the queues in consumer order.
    assert got == [
        {"q": "qa", "p": 0},
        {"q": "qb", "p": 0},
        {"q": "qa", "p": 3},
        {"q": "qb", "p": 3},
        {"q": "qa", "p": 6},
    ]


def test_an_idle_consumer_blocks_and_wakes_on_the_bell(url: str, redis_client: redis.Redis) -> None:
    latencies: list[float] = []
    sent: dict[int, float] = {}
    with Connection(url, transport=TRANSPORT_PATH, transport_options=OPTIONS) as conn:
        publisher = Connection(url, transport=TRANSPORT_PATH, transport_options=OPTIONS)
        producer = Producer(publisher)
        producer.publish({"n": -1}, exchange="idle", routing_key="idle", declare=[queue("idle")])

        def on_message(body: Any, message: Any) -> None:
            if body["n"] >= 0:
                latencies.append(time.monotonic() - sent[body["n"]])
            message.ack()

        with Consumer(conn, [queue("idle")], callbacks=[on_message], prefetch_count=1):
            conn.drain_events(timeout=5)  # the warm-up message
            redis_client.config_resetstat()
            idle_until = time.monotonic() + 3
            while time.monotonic() < idle_until:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=idle_until - time.monotonic())
            stats = redis_client.info("commandstats")
            # Round trips only: the pop script's own RPOP/LLEN calls are counted separately by Redis.
            idle_calls = sum(
                int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "brpop")
            )
            for n in range(8):
                # Publish from the consumer's side at a random phase of its 1 s wait.
                time.sleep(0.13 * (n % 5))
                sent[n] = time.monotonic()
                producer.publish({"n": n}, exchange="idle", routing_key="idle")
                deadline = time.monotonic() + 5
                while len(latencies) <= n and time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError):
                        conn.drain_events(timeout=0.5)
        publisher.release()
    # 3 s idle: one blocking wait (1 s) and one pop per second, not a busy loop.
    assert idle_calls <= 10, f"{idle_calls} commands in 3 s idle: busy polling"
    assert len(latencies) == 8
    # Woken by the bell at once, not at the end of its 1 s wait.
    assert sorted(latencies)[len(latencies) // 2] < 0.25, f"wake-up latencies {latencies}"


def test_a_late_ack_from_a_frozen_worker_keeps_the_next_delivery_held(
    url: str, redis_client: redis.Redis
) -> None:
    publish(url, "frozen", [{"job": 1}])
    held: dict[str, Any] = {}
    connections = [Connection(url, transport=TRANSPORT_PATH, transport_options=OPTIONS) for _ in range(2)]
    consumers = [
        Consumer(
            conn, [queue("frozen")], callbacks=[lambda b, m, n=n: held.setdefault(n, m)], prefetch_count=1
        )
        for n, conn in zip(("frozen", "next"), connections, strict=True)
    ]
    try:
        for consumer in consumers:
            consumer.consume()
        connections[0].drain_events(timeout=5)
        # The first consumer freezes past the visibility timeout; the second gets the message.
        wait_until(lambda: _drain_once(connections[1]) or "next" in held, timeout=15, what="the redelivery")
        assert held["next"].delivery_tag != held["frozen"].delivery_tag, "one tag per delivery"
        held["frozen"].ack()  # the frozen worker wakes up and acks its stale delivery
        # The second delivery is still held: were its consumer to die now, it would come back.
        assert redis_client.hlen("unacked") == 1
        held["next"].ack()
        assert redis_client.hlen("unacked") == 0
    finally:
        for conn in connections:
            conn.release()


def _drain_once(conn: Connection) -> bool:
    with contextlib.suppress(TimeoutError):
        conn.drain_events(timeout=0.5)
    return False


def test_a_message_delivered_delivery_limit_times_goes_to_the_dead_letter_list(
    url: str, redis_client: redis.Redis
) -> None:
    publish(url, "crashy", [{"kills": "its consumer"}])
    for attempt in range(3):
        got = consume(url, ["crashy"], 1, ack=False, delivery_limit=3)  # closed unacked: restored
        assert len(got) == 1, f"delivery {attempt + 1} did not happen"
        assert got[0][1].headers.get(DELIVERY_COUNT_HEADER, 0) == attempt
    assert consume(url, ["crashy"], 1, delivery_limit=3, timeout=3) == []
    assert redis_client.llen("crashy") == 0
    assert redis_client.hlen("unacked") == 0
    [letter] = dead_letter.read(redis_client)
    assert letter.queue == "crashy"
    assert "delivery limit 3" in letter.reason
    assert letter.summary()["deliveries"] == 3


def test_the_dead_letter_command_lists_requeues_and_drops(url: str, redis_client: redis.Redis) -> None:
    publish(url, "dl", [{"n": 1}])
    consume(url, ["dl"], 1, ack=False, delivery_limit=1)
    assert consume(url, ["dl"], 1, delivery_limit=1, timeout=3) == []  # dead-lettered now
    redis_client.lpush("dl", b"\xffnot a message")
    assert consume(url, ["dl"], 1, timeout=3) == []
    cli = [sys.executable, "-m", "celery_fleet.cli", "dead-letter"]
    env_url = ["--broker-url", url]
    listed = subprocess.run([*cli, "list", *env_url, "--json"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(e["queue"], e["requeueable"]) for e in entries] == [("dl", False), ("dl", True)]
    requeued = subprocess.run([*cli, "requeue", *env_url, "1"], capture_output=True, text=True, timeout=60)
    assert requeued.returncode == 0, requeued.stderr
    assert "requeued 1" in requeued.stdout
    bad = subprocess.run([*cli, "requeue", *env_url, "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "not a kombu message" in bad.stderr
    assert redis_client.llen(bell_key("dl")) >= 1, "a requeue rings the bell"
    got = consume(url, ["dl"], 1, delivery_limit=1)
    assert [body for body, _ in got] == [{"n": 1}], "requeued with its delivery count reset"
    dropped = subprocess.run([*cli, "drop", *env_url, "--all"], capture_output=True, text=True, timeout=60)
    assert "dropped 1" in dropped.stdout
    assert redis_client.llen(DEAD_LETTER_KEY) == 0


def test_the_outbox_view_sees_waiting_held_and_dead_lettered_task_ids(
    url: str, redis_client: redis.Redis
) -> None:
    from celery_fleet import outbox
    from celery_fleet.transport import dead_letter_entry
    from tests.support.ledger import send_tasks

    send_tasks(url, [("jobs.tasks.noop", (), f"task-{i}") for i in range(3)], "default")
    with Connection(url, transport=TRANSPORT_PATH, transport_options=OPTIONS) as conn:
        held: list[Any] = []
        with Consumer(conn, [queue("default")], callbacks=[lambda _, m: held.append(m)], prefetch_count=1):
            conn.drain_events(timeout=5)  # task-0 is now held, unacked
            redis_client.lpush(
                DEAD_LETTER_KEY, dead_letter_entry("default", "test", redis_client.lindex("default", 0))
            )
            redis_client.lpop("default")  # ...and task-2 (the newest, at the head) only there
            view = outbox.redis_view(redis_client, ["default"])
            assert view.complete
            assert view.waiting == {"default": 1}
            assert {"task-0", "task-1", "task-2"} <= view.seen_ids
            assert view.where(outbox.Pending("task-9", "default", 0, True)) is None
            assert not outbox.redis_view(redis_client, ["default"], limit=2).complete
            held[0].ack()
