"""The HPA path for real: backlog in Redis -> exporter -> Prometheus -> prometheus-adapter ->
kube-apiserver's aggregator (external.metrics.k8s.io) -> the HPA controller in
kube-controller-manager -> the worker Deployment's replicas.

Also the README's manual-scaling rule with autoscaling on: a `kubectl scale` is overwritten
at the HPA's next reconcile.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from celery_fleet.local.waiting import wait_until
from tests.e2e.chart import install, load_ci_values, values_file
from tests.e2e.host import PrometheusAdapter, enqueue, external_metric, quantity
from tests.e2e.kube import Kube, scale_and_wait_overridden
from tests.e2e.timeline import ReplicaTimeline
from tests.support.fleet import Fleet

RELEASE = "fleet"
#: kube-controller-manager --horizontal-pod-autoscaler-sync-period (tests/cluster/e2e.sh).
HPA_SYNC = 5.0
SCRAPE = 1.0
TARGET = 10  # targetBacklogPerWorker of the default group
#: How late the replica timeline may see a change (its sampling period + one API round trip).
SAMPLE_SLACK = 2.0
MAX = 6
SCALE_DOWN_WINDOW = 15
BACKLOG = "celery_fleet_queue_backlog"
OLDEST_AGE = "celery_fleet_queue_oldest_age_seconds"


def hpa_values() -> dict[str, Any]:
    """ci/hpa-values.yaml with windows short enough for a test (and a smaller max)."""
    values = load_ci_values("hpa-values.yaml")
    default, exports = values["workers"]
    default["autoscaling"].update(
        minReplicas=1,
        maxReplicas=MAX,
        targetBacklogPerWorker=TARGET,
        behavior={
            "scaleUp": {
                "stabilizationWindowSeconds": 0,
                "policies": [{"type": "Pods", "value": 10, "periodSeconds": 5}],
            },
            "scaleDown": {
                "stabilizationWindowSeconds": SCALE_DOWN_WINDOW,
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 5}],
            },
        },
    )
    assert exports["queues"] == ["exports"]
    return values


def _hpa_has_metric(kube: Kube, namespace: str, name: str) -> bool:
    hpa = kube.get("-n", namespace, "hpa", name)
    conditions = {c["type"]: c for c in hpa.get("status", {}).get("conditions", [])}
    active = conditions.get("ScalingActive", {})
    return active.get("status") == "True" and bool(hpa["status"].get("currentMetrics"))


def test_hpa_scales_workers_on_queue_backlog(
    kube: Kube,
    namespace: str,
    exporter: Any,
    prometheus_for: Any,
    fleet: Fleet,
    tmp_path: Path,
    record_timing: Any,
) -> None:
    began = time.monotonic()
    prometheus = prometheus_for(namespace)
    adapter = PrometheusAdapter(kube, prometheus.url, tmp_path / "adapter").start()
    try:
        record_timing("hpa: Prometheus + prometheus-adapter + APIService available", time.monotonic() - began)
        _run_hpa_scenario(kube, namespace, exporter, fleet, tmp_path, record_timing)
    finally:
        adapter.stop()


def _run_hpa_scenario(
    kube: Kube, namespace: str, exporter: Any, fleet: Fleet, tmp_path: Path, record_timing: Any
) -> None:
    install(kube, RELEASE, namespace, ["-f", str(values_file(tmp_path, "hpa", hpa_values()))])
    default, exports = f"{RELEASE}-celery-fleet-worker-default", f"{RELEASE}-celery-fleet-worker-exports"
    assert kube.exists("-n", namespace, "hpa", default)
    assert kube.exists("-n", namespace, "hpa", exports)

    # The HPA controller reads the External metric through the aggregator: both HPAs active.
    began = time.monotonic()
    for name in (default, exports):
        wait_until(
            lambda n=name: _hpa_has_metric(kube, namespace, n),
            timeout=60,
            interval=1,
            what=f"HPA {name} to read celery_fleet_queue_backlog",
        )
    record_timing("hpa: HPAs read the External metric", time.monotonic() - began)
    idle = external_metric(kube, namespace, BACKLOG, "queue_name in (default,periodic)")
    assert idle, "no External metric for the default group"
    assert sum(quantity(m["value"]) for m in idle) == 0, idle

    with ReplicaTimeline(kube, namespace, [default, exports]) as timeline:
        # README: with autoscaling on, a manual scale is overwritten at the next reconcile.
        timeline.wait_for(default, 1, timeout=30)
        took = scale_and_wait_overridden(kube, namespace, default, 4, back_to=1, timeout=HPA_SYNC * 3 + 5)
        record_timing("hpa: manual scale to 4 overridden back to 1", took)

        # A burst: 30 + 15 messages on the default group's two queues, 2 on exports.
        burst = {"default": 30, "periodic": 15, "exports": 2}
        t0 = time.monotonic()
        for queue, count in burst.items():
            enqueue(exporter.broker_url, queue, count)
        expected = math.ceil((burst["default"] + burst["periodic"]) / TARGET)
        assert 1 < expected <= MAX
        wait_until(
            lambda: exporter.backlog("default") == 30, timeout=10, what="the exporter to see the burst"
        )
        # What the HPA reads (and sums): the series of the group's two queues, this namespace only.
        selector = "queue_name in (default,periodic)"
        wait_until(
            lambda: (
                sum(quantity(m["value"]) for m in external_metric(kube, namespace, BACKLOG, selector)) == 45
            ),
            timeout=10,
            what="the External metric to add up to 45",
        )
        assert external_metric(kube, "default", BACKLOG, selector) == []
        # The latency rule (targetOldestAgeSeconds) is served too: one series, the oldest
        # waiting message's age over the group's queues, no older than the burst.
        (age,) = external_metric(kube, namespace, OLDEST_AGE, selector)
        assert 0 <= quantity(age["value"]) <= time.monotonic() - t0 + SCRAPE + 1, age
        up = timeline.wait_for(default, expected, timeout=SCRAPE + 3 * HPA_SYNC + 15)
        record_timing(f"hpa: burst of 45 -> {expected} replicas", up - t0)
        assert max(timeline.values(default, since=t0)) == expected, timeline.describe(default, t0)
        # exports: ceil(2 / 3) = 1, its min: not moved by the other group's burst.
        assert set(timeline.values(exports, since=t0)) == {1}, timeline.describe(exports, t0)

        # Drain with a real Celery worker on the host; then back to min after the window.
        drain_start = time.monotonic()
        fleet.start_worker(["default", "periodic"], concurrency=4, name="drainer")
        wait_until(
            lambda: exporter.backlog("default") == 0 and exporter.backlog("periodic") == 0,
            timeout=60,
            what="the worker to drain the backlog",
        )
        drained = time.monotonic()
        record_timing("hpa: host worker drained 45 tasks", drained - drain_start)
        down = timeline.wait_for(default, 1, timeout=SCALE_DOWN_WINDOW + 3 * HPA_SYNC + 20)
        record_timing(f"hpa: backlog gone -> back to 1 (window {SCALE_DOWN_WINDOW}s)", down - drained)
        # The scale-down stabilization window held. Every HPA sync between the scale-up and the
        # drain saw the whole backlog and recommended `expected` (the last one at most one sync
        # period + one scrape before the drain began); a replica may go only once no such
        # recommendation is left in the window.
        first_drop = timeline.first_below(default, expected, since=up)
        assert first_drop is not None
        last_full = max(up - SAMPLE_SLACK, drain_start - HPA_SYNC - SCRAPE)
        assert first_drop >= last_full + SCALE_DOWN_WINDOW - SAMPLE_SLACK, (
            f"scaled down {last_full + SCALE_DOWN_WINDOW - first_drop:.1f}s before the stabilization "
            f"window allows: {timeline.describe(default, t0)}"
        )
        print("default:", timeline.describe(default, t0))
        print("exports:", timeline.describe(exports, t0))
