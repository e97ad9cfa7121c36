"""Task metrics counted by workers and publishers, written to Redis in batches, read as the exporter does."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
import redis

from celery_fleet.exporter.collectors import TaskSeriesSource
from celery_fleet.exporter.redis_accounting import run_scripts
from celery_fleet.exporter.task_series import HostnameLabels, parse_reply, task_families
from celery_fleet.headers import PUBLISHED_AT_HEADER
from celery_fleet.local.redis_server import RedisServer
from celery_fleet.local.waiting import free_port, wait_until
from celery_fleet.task_metrics import (
    RUNTIME_BUCKETS,
    WAIT_BUCKETS,
    Batch,
    Flusher,
    TaskRecorder,
    bucket_field,
    counter_field,
    exception_class,
    sum_field,
)
from tests.support.fleet import Fleet
from tests.support.ledger import read_runs, send_tasks


def request(uuid: str, name: str = "t.add", queue: str = "default", **extra: Any) -> SimpleNamespace:
    return SimpleNamespace(
        id=uuid,
        name=name,
        delivery_info={"routing_key": queue},
        request_dict={PUBLISHED_AT_HEADER: extra.get("published_at")} if "published_at" in extra else {},
        eta=extra.get("eta"),
    )


def test_exception_class_names() -> None:
    assert exception_class("DemoFailure('failed on purpose')") == "DemoFailure"
    assert (
        exception_class("celery.exceptions.TimeLimitExceeded(300,)") == "celery.exceptions.TimeLimitExceeded"
    )
    assert exception_class(None) == "UnknownException"


def test_histogram_buckets_take_the_first_bound_at_or_above() -> None:
    batch = Batch()
    batch.observe("runtime", "t", "q", 95.0)  # between 60 and 120 s
    batch.observe("runtime", "t", "q", 0.01)  # on a bound: le="0.01"
    batch.observe("queue_wait_time", "t", "q", 7200.0)  # beyond the last finite bound: +Inf
    ints, floats = batch.take()
    assert ints[bucket_field("runtime", "t", "q", RUNTIME_BUCKETS.index(120.0))] == 1
    assert ints[bucket_field("runtime", "t", "q", 0)] == 1
    assert ints[bucket_field("queue_wait_time", "t", "q", len(WAIT_BUCKETS) - 1)] == 1
    assert floats[sum_field("runtime", "t", "q")] == pytest.approx(95.01)
    assert batch.take() == ({}, {})


def test_recorder_counts_as_celery_exporter_does() -> None:
    batch = Batch()
    recorder = TaskRecorder(batch)
    now = time.time()
    recorder.on_received(request("a", published_at=now - 4.0))
    recorder.on_event("task-received", {"uuid": "a", "name": "t.add"})
    recorder.on_event("task-started", {"uuid": "a"})
    recorder.on_event("task-succeeded", {"uuid": "a", "runtime": 0.2})
    # b was published 10 s ago with a 9 s countdown: it waited 1 s, not 10.
    eta = datetime.fromtimestamp(now - 1.0, tz=UTC)
    recorder.on_received(request("b", published_at=now - 10.0, eta=eta))
    recorder.on_event("task-started", {"uuid": "b"})
    recorder.on_event("task-failed", {"uuid": "b", "exception": "ValueError('bad')"})
    recorder.on_event("task-revoked", {"uuid": "never-received"})
    ints, floats = batch.take()
    assert ints[counter_field("received", "t.add", "default")] == 1
    assert ints[counter_field("started", "t.add", "default")] == 2
    assert ints[counter_field("succeeded", "t.add", "default")] == 1
    assert ints[counter_field("failed", "t.add", "default", "ValueError")] == 1
    # Every counter of a task exists from its first event, at 0 when nothing happened.
    assert ints[counter_field("retried", "t.add", "default")] == 0
    assert ints[counter_field("failed", "t.add", "default")] == 0
    assert ints[counter_field("revoked", "unknown", "unknown")] == 1
    assert floats[sum_field("queue_wait_time", "t.add", "default")] == pytest.approx(5.0, abs=0.5)
    assert floats[sum_field("runtime", "t.add", "default")] == pytest.approx(0.2)


def test_a_failed_flush_keeps_its_counts(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    batch = Batch()
    batch.count(counter_field("succeeded", "t", "q"), 3)
    dead = Flusher(batch, f"redis://127.0.0.1:{free_port()}/0", "worker:w@h")
    assert not dead.flush()
    alive = Flusher(batch, redis_server.url, "worker:w@h")
    assert alive.flush()
    assert redis_client.hget("celery_fleet:metrics:worker:w@h", counter_field("succeeded", "t", "q")) == b"3"


def totals(client: redis.Redis) -> dict[str, float]:
    """The task series as the exporter builds them: ``metric{labels}`` -> value."""
    source = TaskSeriesSource(HostnameLabels("exporter-host"), purge_after=600)
    (reply,) = run_scripts(client, [source.call(time.time())])
    found = {}
    for family in task_families(parse_reply(reply), source.labels):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k not in ("hostname",))
            found[f"{s.name}{{{labels}}}"] = found.get(f"{s.name}{{{labels}}}", 0.0) + s.value
    return found


def countdown_task(broker_url: str, seconds: int) -> float:
    """``jobs.tasks.noop`` with a countdown, published as the app does; returns when."""
    from fleetsite.celery import app

    with app.connection_for_write(broker_url) as conn:
        published = time.time()
        app.send_task("jobs.tasks.noop", queue="default", countdown=seconds, producer=app.amqp.Producer(conn))
    return published


@pytest.mark.slow
def test_workers_count_their_tasks_without_task_events(fleet: Fleet, redis_client: redis.Redis) -> None:
    broker = fleet.env["CELERY_BROKER_URL"]
    events = redis_client.pubsub()
    events.psubscribe("*celeryev/task.*")  # any task event the fleet sends would land here
    worker = fleet.start_worker(["default"], concurrency=2, name="counted")
    work = [(f"ok-{i}", 0.05) for i in range(6)] + [("broken", "not-a-number"), ("killed", 3.0)]
    send_tasks(broker, [("jobs.tasks.timed_work", (key, secs), key) for key, secs in work], "default")
    published = countdown_task(broker, 5)
    # SIGKILL the pool processes while "killed" is the only task running: only the worker's
    # main process sees that loss (the task is requeued: reject_on_worker_lost).
    db = fleet.data_dir / "db.sqlite3"

    def only_killed_runs() -> bool:
        runs = read_runs(db)
        done = all(runs.get(f"ok-{i}") and runs[f"ok-{i}"].completions for i in range(6))
        return done and "broken" in runs and "killed" in runs

    wait_until(only_killed_runs, timeout=60, what="the other tasks to finish and 'killed' to start")
    children = psutil.Process(worker.pid).children()
    assert children, "no pool process to kill"
    for child in children:
        child.send_signal(signal.SIGKILL)

    expected = {
        "celery_task_received_total{name=jobs.tasks.timed_work,queue_name=default}": 9,  # killed twice
        "celery_task_started_total{name=jobs.tasks.timed_work,queue_name=default}": 9,
        "celery_task_succeeded_total{name=jobs.tasks.timed_work,queue_name=default}": 7,
        "celery_task_failed_total{exception=TypeError,name=jobs.tasks.timed_work,queue_name=default}": 1,
        "celery_task_rejected_total{name=jobs.tasks.timed_work,queue_name=default}": 1,  # requeued
        "celery_task_runtime_count{name=jobs.tasks.timed_work,queue_name=default}": 7,
        "celery_task_succeeded_total{name=jobs.tasks.noop,queue_name=default}": 1,
        "celery_task_sent_total{name=jobs.tasks.timed_work,queue_name=default}": 8,
        "celery_task_sent_total{name=jobs.tasks.noop,queue_name=default}": 1,
        "celery_task_queue_wait_time_count{name=jobs.tasks.noop,queue_name=default}": 1,
    }

    def counted() -> bool:
        found = totals(redis_client)
        return all(found.get(k) == v for k, v in expected.items())

    try:
        wait_until(counted, timeout=90, what="the totals to match")
    finally:
        print({k: totals(redis_client).get(k) for k in expected})
    found = totals(redis_client)
    assert read_runs(db)["killed"].starts == 2  # it really was killed once, and ran again
    # The noop waited for its 5 s countdown, which is not queue wait.
    wait = found["celery_task_queue_wait_time_sum{name=jobs.tasks.noop,queue_name=default}"]
    assert 0 <= wait < 2.5, wait
    assert time.time() - published >= 5
    assert found["celery_task_failed_total{exception=,name=jobs.tasks.noop,queue_name=default}"] == 0
    assert events.get_message(timeout=0.1) is not None  # the psubscribe confirmation
    assert events.get_message(timeout=0.5) is None, "the fleet sent task events"
    events.close()
