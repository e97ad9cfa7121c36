"""The KEDA path for real: the chart's ScaledObject (prometheus trigger, its default query on
``celery_fleet_queue_backlog``) -> KEDA's operator (on the host, built from source) querying
the host Prometheus that scrapes the real exporter -> the HPA KEDA creates -> KEDA's metrics
API server behind the external.metrics.k8s.io APIService -> the worker Deployment.

Scale from zero (KEDA's activation), up to ceil(backlog / target), back down after the
HPA's stabilization window and to zero after ``cooldownPeriod``; and a manual `kubectl scale`
overwritten, as docs/autoscaling.md says.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest

from celery_fleet.local.waiting import wait_until
from tests.e2e.chart import install, load_ci_values, values_file
from tests.e2e.host import Keda, enqueue, tool
from tests.e2e.kube import Kube, scale_and_wait_overridden
from tests.e2e.timeline import ReplicaTimeline
from tests.support.fleet import Fleet

RELEASE = "fleet"
HPA_SYNC = 5.0
POLLING = 2
COOLDOWN = 10
SCALE_DOWN_WINDOW = 10
TARGET = 10
#: How late the replica timeline may see a change (its sampling period + one API round trip).
SAMPLE_SLACK = 2.0
MAX = 6


def keda_values(prometheus_url: str) -> dict[str, Any]:
    """ci/keda-values.yaml pointed at the host Prometheus, with windows short enough for a test."""
    values = load_ci_values("keda-values.yaml")
    default, exports = values["workers"]
    default["autoscaling"].update(
        minReplicas=0,
        maxReplicas=MAX,
        targetBacklogPerWorker=TARGET,
        activationBacklog=0,
        pollingInterval=POLLING,
        cooldownPeriod=COOLDOWN,
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
    # The chart wants cooldownPeriod >= the drain window (a worker scaled to zero has drained).
    default["timings"] = {"softTimeLimit": 50, "timeLimit": 60, "drainWindow": COOLDOWN // 2}
    for group in (default, exports):
        group["autoscaling"]["prometheus"]["serverAddress"] = prometheus_url
    return values


@pytest.fixture
def keda(kube: Kube, tmp_path: Path) -> Any:
    if not tool("keda-operator").exists():
        pytest.fail("KEDA is not built: tests/cluster/build-autoscalers.sh keda")
    running = Keda(kube, tmp_path / "keda")
    try:
        running.start()
        yield running
    finally:
        running.stop()


def _scaled_object_ready(kube: Kube, namespace: str, name: str) -> bool:
    so = kube.get("-n", namespace, "scaledobject", name)
    conditions = {c["type"]: c["status"] for c in so.get("status", {}).get("conditions", [])}
    return conditions.get("Ready") == "True"


def test_keda_scales_workers_from_zero_and_back(
    kube: Kube,
    namespace: str,
    crds: list[str],
    exporter: Any,
    prometheus_for: Any,
    keda: Keda,
    fleet: Fleet,
    tmp_path: Path,
    record_timing: Any,
) -> None:
    prometheus = prometheus_for(namespace)
    install(kube, RELEASE, namespace, ["-f", str(values_file(tmp_path, "keda", keda_values(prometheus.url)))])
    default, exports = f"{RELEASE}-celery-fleet-worker-default", f"{RELEASE}-celery-fleet-worker-exports"

    began = time.monotonic()
    for name in (default, exports):
        wait_until(
            lambda n=name: _scaled_object_ready(kube, namespace, n),
            timeout=90,
            interval=1,
            what=f"ScaledObject {name} to be Ready",
        )
        # KEDA created the HPA under the chart's name (advanced.horizontalPodAutoscalerConfig.name).
        wait_until(lambda n=name: kube.exists("-n", namespace, "hpa", n), timeout=30, what=f"HPA {name}")
    record_timing("keda: ScaledObjects Ready, HPAs created", time.monotonic() - began)

    with ReplicaTimeline(kube, namespace, [default, exports]) as timeline:
        # Idle: the default group goes to zero (minReplicas 0), exports stays at its min 1.
        zero = timeline.wait_for(default, 0, timeout=COOLDOWN + 30)
        record_timing("keda: idle group scaled to zero", zero - began)
        timeline.wait_for(exports, 1, timeout=30)

        # A manual scale is overwritten (docs/autoscaling.md).
        took = scale_and_wait_overridden(
            kube, namespace, default, 3, back_to=0, timeout=COOLDOWN + 2 * HPA_SYNC + 20
        )
        record_timing("keda: manual scale to 3 overridden back to 0", took)

        burst = {"default": 30, "periodic": 15, "exports": 2}
        t0 = time.monotonic()
        for queue, count in burst.items():
            enqueue(exporter.broker_url, queue, count)
        expected = math.ceil((burst["default"] + burst["periodic"]) / TARGET)
        up = timeline.wait_for(default, expected, timeout=POLLING + 3 * HPA_SYNC + 20)
        record_timing(f"keda: burst of 45 -> 0 -> {expected} replicas", up - t0)
        assert max(timeline.values(default, since=t0)) == expected, timeline.describe(default, t0)
        assert set(timeline.values(exports, since=t0)) == {1}, timeline.describe(exports, t0)
        # Past activation (0 -> 1) it is the HPA, reading KEDA's External metric through the
        # aggregator, that asked for `expected`.
        hpa = kube.get("-n", namespace, "hpa", default)
        assert hpa["status"]["desiredReplicas"] == expected, hpa["status"]
        metric = hpa["status"]["currentMetrics"][0]["external"]
        assert metric["metric"]["name"].startswith("s0-prometheus"), metric

        drain_start = time.monotonic()
        fleet.start_worker(["default", "periodic"], concurrency=4, name="drainer")
        wait_until(
            lambda: exporter.backlog("default") == 0 and exporter.backlog("periodic") == 0,
            timeout=60,
            what="the worker to drain the backlog",
        )
        drained = time.monotonic()
        down = timeline.wait_for(default, 0, timeout=SCALE_DOWN_WINDOW + COOLDOWN + 3 * HPA_SYNC + 30)
        record_timing(
            f"keda: backlog gone -> back to 0 (window {SCALE_DOWN_WINDOW}s, cooldown {COOLDOWN}s)",
            down - drained,
        )
        first_drop = timeline.first_below(default, expected, since=up)
        assert first_drop is not None
        last_full = max(up - SAMPLE_SLACK, drain_start - HPA_SYNC - SAMPLE_SLACK)
        assert first_drop >= last_full + SCALE_DOWN_WINDOW - SAMPLE_SLACK, timeline.describe(default, t0)
        print("default:", timeline.describe(default, t0))
        print("exports:", timeline.describe(exports, t0))
