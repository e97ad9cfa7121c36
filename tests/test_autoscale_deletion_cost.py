"""Pod deletion cost: the pure cost and patch plan, and busy-ness read from real worker events."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import redis

from celery_fleet.autoscale.deletion_cost import (
    ANNOTATION,
    DeletionCostController,
    deletion_cost,
    plan_patches,
    pod_for_hostname,
)
from celery_fleet.event_stream import EventStream, WorkerTable
from celery_fleet.local.waiting import wait_until
from tests.support.fleet import Fleet
from tests.support.ledger import enqueue_timed_work


@pytest.mark.parametrize(
    ("active", "levels", "cost"),
    [(None, 1, 0), (0, 1, 0), (1, 1, 1), (4, 1, 1), (4, 3, 3), (2, 3, 2), (-1, 1, 0)],
)
def test_idle_pods_are_cheapest(active: int | None, levels: int, cost: int) -> None:
    assert deletion_cost(active, levels=levels) == cost


def test_levels_must_be_positive() -> None:
    with pytest.raises(ValueError, match="levels"):
        deletion_cost(1, levels=0)


@pytest.mark.parametrize(
    ("hostname", "pods", "pod"),
    [
        ("celery@worker-7d9f-abcde", ["worker-7d9f-abcde", "worker-7d9f-fghij"], "worker-7d9f-abcde"),
        ("default@worker-1.workers.ns.svc", ["worker-1"], "worker-1"),
        ("celery@laptop", ["worker-1"], None),
        ("worker-2", ["worker-2"], "worker-2"),
    ],
)
def test_worker_hostname_maps_to_its_pod(hostname: str, pods: list[str], pod: str | None) -> None:
    assert pod_for_hostname(hostname, pods) == pod


def test_plan_patches_only_what_changed() -> None:
    pods = {"w-a": "0", "w-b": None, "w-c": "1", "w-d": "1"}
    active = {"celery@w-a": 2, "celery@w-b": 0, "celery@w-c": 1, "celery@w-d": None, "celery@gone": 3}
    # w-a became busy, w-b gets its first value, w-c unchanged, w-d's heartbeat is stale: 0.
    assert plan_patches(pods, active) == {"w-a": "1", "w-b": "0", "w-d": "0"}
    assert plan_patches({"w-a": "1"}, {"celery@w-a": 2}, levels=3) == {"w-a": "2"}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_activity_from_heartbeats_and_task_events() -> None:
    clock = Clock()
    workers = WorkerTable(clock=clock)
    assert workers.silent_for() is None
    workers.on_event({"type": "worker-heartbeat", "hostname": "celery@a", "active": 0})
    workers.on_event({"type": "worker-heartbeat", "hostname": "celery@b", "active": 2})
    workers.on_event({"type": "task-started", "hostname": "celery@a", "uuid": "x"})
    assert workers.active_by_hostname() == {"celery@a": 1, "celery@b": 2}
    clock.now += 20
    workers.on_event({"type": "worker-heartbeat", "hostname": "celery@a", "active": 0})
    assert workers.active_by_hostname() == {"celery@a": 0, "celery@b": None}  # b's beat is stale
    workers.on_event({"type": "worker-offline", "hostname": "celery@b"})
    assert workers.active_by_hostname() == {"celery@a": 0, "celery@b": None}  # gone, not busy
    workers.on_event({"type": "worker-heartbeat"})  # no hostname: ignored, but the stream is alive
    assert workers.silent_for() == 0.0


class RecordingCoreV1:
    """Stands in for kubernetes.client.CoreV1Api in this unit test of the reconcile decision."""

    def __init__(self, pods: dict[str, str | None]) -> None:
        self.pods = pods
        self.patches: list[tuple[str, str, Any]] = []

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> Any:
        items = [
            SimpleNamespace(
                metadata=SimpleNamespace(
                    name=name, annotations={ANNOTATION: v} if v else None, deletion_timestamp=None
                ),
                status=SimpleNamespace(phase="Running"),
            )
            for name, v in self.pods.items()
        ]
        return SimpleNamespace(items=items)

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any) -> None:
        self.patches.append((name, namespace, body))
        self.pods[name] = body["metadata"]["annotations"][ANNOTATION]


def test_reconcile_patches_changes_and_holds_still_when_events_stop() -> None:
    clock = Clock()
    workers = WorkerTable(clock=clock)
    api = RecordingCoreV1({"w-a": None, "w-b": None})
    controller = DeletionCostController(api, "ns", "component=worker", workers)
    assert controller.reconcile() == {}  # no events ever: nothing is known, nothing written
    workers.on_event({"type": "worker-heartbeat", "hostname": "celery@w-a", "active": 1})
    workers.on_event({"type": "worker-heartbeat", "hostname": "celery@w-b", "active": 0})
    assert controller.reconcile() == {"w-a": "1", "w-b": "0"}
    assert api.patches[0] == ("w-a", "ns", {"metadata": {"annotations": {ANNOTATION: "1"}}})
    assert controller.reconcile() == {}  # unchanged: no patch
    clock.now += 60  # the event stream went silent (broker outage): keep the last costs
    assert controller.reconcile() == {}
    assert api.pods == {"w-a": "1", "w-b": "0"}


@pytest.mark.slow
def test_real_worker_heartbeats_report_running_tasks(fleet: Fleet, redis_client: redis.Redis) -> None:
    broker_url = fleet.env["CELERY_BROKER_URL"]
    workers = WorkerTable()
    listener = EventStream(broker_url, [workers.on_event])
    listener.start()
    try:
        fleet.start_worker(("default",), name="busy")
        host = "busy@test"
        wait_until(
            lambda: workers.active_by_hostname().get(host) == 0,
            timeout=60,
            what="an idle heartbeat from the worker",
        )
        enqueue_timed_work(broker_url, [("cost-1", 6.0)])
        wait_until(
            lambda: workers.active_by_hostname().get(host) == 1,
            timeout=30,
            what="the worker to report a running task",
        )
        costs = plan_patches({"test": "0"}, workers.active_by_hostname())
        assert costs == {"test": "1"}
        wait_until(
            lambda: workers.active_by_hostname().get(host) == 0,
            timeout=30,
            what="the worker to be idle again",
        )
    finally:
        listener.stop(timeout=15)
    assert not listener.is_alive()
