"""Pure logic of the event accounting (unit tests: events as Celery sends them, no broker)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from celery_fleet.exporter.collectors import WorkerCollector
from celery_fleet.exporter.events import TaskMetrics, WorkerTable, exception_class


def sample(registry: CollectorRegistry, metric: str, **labels: str) -> float | None:
    return registry.get_sample_value(metric, labels)


def test_task_events_count_by_name_and_queue_without_hostnames() -> None:
    registry = CollectorRegistry()
    tasks = TaskMetrics(registry)
    no_worker = lambda _hostname: None  # noqa: E731
    tasks.on_event(
        {"type": "task-sent", "uuid": "a", "name": "t.add", "queue": "default", "hostname": "web@1"},
        no_worker,
    )
    tasks.on_event({"type": "task-received", "uuid": "a", "name": "t.add", "hostname": "w@1"}, no_worker)
    tasks.on_event({"type": "task-started", "uuid": "a", "hostname": "w@1"}, no_worker)
    tasks.on_event({"type": "task-succeeded", "uuid": "a", "runtime": 95.0, "hostname": "w@1"}, no_worker)
    tasks.on_event(
        {"type": "task-received", "uuid": "b", "name": "t.add", "hostname": "w@1"}, lambda h: "exports"
    )
    tasks.on_event(
        {"type": "task-failed", "uuid": "b", "exception": "ValueError('bad')", "hostname": "w@1"}, no_worker
    )

    labels = {"name": "t.add", "queue_name": "default"}
    assert sample(registry, "celery_task_sent_total", **labels) == 1
    assert sample(registry, "celery_task_received_total", **labels) == 1
    assert sample(registry, "celery_task_succeeded_total", **labels) == 1
    assert sample(registry, "celery_task_failed_total", exception="", **labels) == 0  # visible at 0
    # The runtime histogram reaches long tasks: 95 s lands between the 60 and 120 s buckets.
    assert sample(registry, "celery_task_runtime_bucket", le="60.0", **labels) == 0
    assert sample(registry, "celery_task_runtime_bucket", le="120.0", **labels) == 1
    # Task b's queue came from the worker that received it (it consumes one queue).
    failed = {"name": "t.add", "queue_name": "exports", "exception": "ValueError"}
    assert sample(registry, "celery_task_failed_total", **failed) == 1
    text = "\n".join(str(m) for m in registry.collect())
    assert "w@1" not in text
    assert "web@1" not in text


def test_exception_class_names() -> None:
    assert exception_class("DemoFailure('failed on purpose')") == "DemoFailure"
    assert (
        exception_class("celery.exceptions.TimeLimitExceeded(300,)") == "celery.exceptions.TimeLimitExceeded"
    )
    assert exception_class(None) == "UnknownException"


def test_workers_per_queue_from_heartbeats() -> None:
    table = WorkerTable(forget_after=600)
    now = 1_000_000.0
    table.on_worker_event({"type": "worker-online", "hostname": "a@x", "freq": 2.0}, now=now)
    table.on_worker_event({"type": "worker-heartbeat", "hostname": "a@x", "freq": 2.0, "active": 3}, now=now)
    table.on_worker_event({"type": "worker-heartbeat", "hostname": "b@y", "freq": 2.0, "active": 1}, now=now)
    table.on_worker_event(
        {"type": "worker-heartbeat", "hostname": "c@z", "freq": 2.0, "active": 0}, now=now - 60
    )
    table.set_details("a@x", ["default", "exports"], 4)
    table.set_details("b@y", ["default"], 2)
    table.set_details("c@z", ["default"], 8)  # its last heartbeat is a minute old: gone

    by_name = {w.hostname: w for w in table.snapshot(now)}
    assert by_name["a@x"].alive(now)
    assert not by_name["c@z"].alive(now)
    assert table.queue_of_worker("b@y") == "default"
    assert table.queue_of_worker("a@x") is None  # two queues: ambiguous

    registry = CollectorRegistry()
    registry.register(WorkerCollector(table, lambda: ["default", "exports", "periodic"], clock=lambda: now))
    assert sample(registry, "celery_active_worker_count", queue_name="default") == 2
    assert sample(registry, "celery_active_process_count", queue_name="default") == 6
    assert sample(registry, "celery_fleet_busy_process_count", queue_name="default") == 4
    assert sample(registry, "celery_fleet_idle_process_count", queue_name="default") == 2
    assert sample(registry, "celery_active_worker_count", queue_name="periodic") == 0


def test_hostname_labels_only_when_asked() -> None:
    table = WorkerTable()
    table.on_worker_event({"type": "worker-heartbeat", "hostname": "a@x", "freq": 2.0, "active": 1})
    table.on_worker_event({"type": "worker-offline", "hostname": "b@y"})
    fleet_wide, per_worker = CollectorRegistry(), CollectorRegistry()
    fleet_wide.register(WorkerCollector(table, lambda: ["default"]))
    per_worker.register(WorkerCollector(table, lambda: ["default"], worker_labels=True))
    assert sample(fleet_wide, "celery_worker_up") == 1
    assert sample(fleet_wide, "celery_fleet_worker_count") == 1
    assert sample(per_worker, "celery_worker_up", hostname="a@x") == 1
    assert sample(per_worker, "celery_worker_up", hostname="b@y") == 0
    assert sample(per_worker, "celery_worker_tasks_active", hostname="a@x") == 1


def test_fleet_wide_worker_up_is_quiet_after_a_clean_scale_to_zero() -> None:
    now = 1_000_000.0
    table = WorkerTable()
    registry = CollectorRegistry()
    registry.register(WorkerCollector(table, lambda: ["default"], clock=lambda: now))
    assert sample(registry, "celery_worker_up") is None  # never had a worker
    table.on_worker_event({"type": "worker-heartbeat", "hostname": "a@x", "freq": 2.0}, now=now - 60)
    assert sample(registry, "celery_worker_up") == 0  # went silent without a goodbye: crashed
    table.on_worker_event({"type": "worker-offline", "hostname": "a@x"}, now=now)
    assert sample(registry, "celery_worker_up") is None  # stopped cleanly: scaled to zero
    assert sample(registry, "celery_fleet_worker_count") == 0
