"""Pure logic of the worker table and the worker series (events as Celery sends them, no broker)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from celery_fleet.event_stream import WorkerTable, host_of, stale_after
from celery_fleet.exporter.collectors import WorkerCollector
from celery_fleet.exporter.task_series import HostnameLabels


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sample(registry: CollectorRegistry, metric: str, **labels: str) -> float | None:
    return registry.get_sample_value(metric, labels)


def collector(table: WorkerTable, labels: HostnameLabels | None = None) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(
        WorkerCollector(
            table, lambda: ["default", "exports", "periodic"], labels=labels or HostnameLabels("exporter")
        )
    )
    return registry


def test_one_rule_for_alive_and_for_a_silent_stream() -> None:
    assert stale_after(2.0) == 10.0  # three beats, never under 10 s
    assert stale_after(5.0) == 15.0
    clock = Clock()
    table = WorkerTable(clock=clock)
    assert table.stream_silent()  # nothing heard yet
    table.on_event({"type": "worker-heartbeat", "hostname": "a@x", "freq": 2.0, "active": 1})
    assert not table.stream_silent()
    clock.now += 10.0
    assert table.active_by_hostname() == {"a@x": 1}
    clock.now += 0.5
    assert table.active_by_hostname() == {"a@x": None}  # its count says nothing now
    assert table.stream_silent()


def test_workers_per_queue_from_heartbeats() -> None:
    clock = Clock()
    table = WorkerTable(clock=clock)
    table.on_event({"type": "worker-heartbeat", "hostname": "c@z", "freq": 2.0, "active": 0})
    clock.now += 60  # c's last heartbeat is a minute old: gone
    table.on_event({"type": "worker-online", "hostname": "a@x", "freq": 2.0})
    table.on_event({"type": "worker-heartbeat", "hostname": "a@x", "freq": 2.0, "active": 3})
    table.on_event({"type": "worker-heartbeat", "hostname": "b@y", "freq": 2.0, "active": 1})
    table.set_details("a@x", ["default", "exports"], 4)
    table.set_details("b@y", ["default"], 2)
    table.set_details("c@z", ["default"], 8)

    registry = collector(table)
    assert sample(registry, "celery_active_worker_count", queue_name="default") == 2
    assert sample(registry, "celery_active_process_count", queue_name="default") == 6
    assert sample(registry, "celery_fleet_busy_process_count", queue_name="default") == 4
    assert sample(registry, "celery_fleet_idle_process_count", queue_name="default") == 2
    assert sample(registry, "celery_active_worker_count", queue_name="periodic") == 0
    assert sample(registry, "celery_fleet_worker_count") == 2


def test_task_started_between_heartbeats_counts_as_busy() -> None:
    table = WorkerTable(clock=Clock())
    table.on_event({"type": "worker-heartbeat", "hostname": "a@x", "active": 0})
    table.on_event({"type": "task-started", "hostname": "a@x", "uuid": "1"})
    table.on_event({"type": "task-sent", "hostname": "web@y", "uuid": "2"})  # a publisher, not a worker
    assert table.active_by_hostname() == {"a@x": 1}


def test_one_series_per_worker_kept_at_zero_until_purged() -> None:
    clock = Clock()
    table = WorkerTable(forget_after=600, clock=clock)
    registry = collector(table)
    assert sample(registry, "celery_worker_up", hostname="pod-a") is None
    for pod in ("pod-a", "pod-b", "pod-c"):
        table.on_event({"type": "worker-heartbeat", "hostname": f"celery@{pod}", "freq": 2.0, "active": 1})
    assert [sample(registry, "celery_worker_up", hostname=p) for p in ("pod-a", "pod-b", "pod-c")] == [
        1,
        1,
        1,
    ]
    assert sample(registry, "celery_worker_tasks_active", hostname="pod-b") == 1

    table.on_event({"type": "worker-offline", "hostname": "celery@pod-a"})  # scaled down cleanly
    clock.now += 30  # pod-b went silent (crashed); pod-c keeps beating
    table.on_event({"type": "worker-heartbeat", "hostname": "celery@pod-c", "freq": 2.0, "active": 0})
    assert sample(registry, "celery_worker_up", hostname="pod-a") == 0
    assert sample(registry, "celery_worker_up", hostname="pod-b") == 0
    assert sample(registry, "celery_worker_tasks_active", hostname="pod-b") == 0
    assert sample(registry, "celery_worker_up", hostname="pod-c") == 1

    table.on_event({"type": "worker-offline", "hostname": "celery@pod-c"})  # scaled to zero
    assert [sample(registry, "celery_worker_up", hostname=p) for p in ("pod-a", "pod-b", "pod-c")] == [
        0,
        0,
        0,
    ]
    clock.now += 570.5  # 600.5 s after the last word of a and b, 570.5 s after c's
    assert sample(registry, "celery_worker_up", hostname="pod-a") is None
    assert sample(registry, "celery_worker_up", hostname="pod-b") is None
    assert sample(registry, "celery_worker_up", hostname="pod-c") == 0  # its goodbye came 30 s later


def test_hostnames_spelled_as_celery_exporter_where_unique() -> None:
    assert host_of("celery@worker-7d9f-abcde") == "worker-7d9f-abcde"
    assert host_of("a@b@pod-b") == "pod-b"
    labels = HostnameLabels(own_host="exporter-pod")
    labels.observe(["celery@pod-a", "celery@pod-b"])
    assert labels("celery@pod-a") == "pod-a"
    # Two workers on one machine would merge into one series: they keep their node names, for good.
    labels.observe(["default-1@laptop", "default-2@laptop"])
    assert labels("default-1@laptop") == "default-1@laptop"
    labels.observe(["default-1@laptop"])
    assert labels("default-1@laptop") == "default-1@laptop"
    # Workers on the exporter's own machine (a local fleet) too, from the first one.
    assert labels("default-1@exporter-pod") == "default-1@exporter-pod"
    assert labels("plainname") == "plainname"


def test_local_fleet_workers_are_counted_one_by_one() -> None:
    table = WorkerTable(clock=Clock())
    for n in range(5):
        table.on_event({"type": "worker-heartbeat", "hostname": f"default-{n}@laptop", "active": 0})
    registry = collector(table)
    series = next(m for m in registry.collect() if m.name == "celery_worker_up").samples
    assert len(series) == 5
    assert all(s.value == 1 for s in series)
