"""The closed autoscaling loop, in keda and in hpa mode, every link real:

jobs POSTed to the web Service -> Redis (the chart's StatefulSet) -> the chart's exporter pod
-> Prometheus discovering it from the chart's ServiceMonitor -> KEDA's operator (keda mode) or
prometheus-adapter + the HPA controller (hpa mode), each authenticated as its ServiceAccount ->
the worker Deployment's replicas -> new worker pods, started by the kubelet, consuming -> the
backlog drains -> replicas fall back to the minimum.

Every job must end SUCCESS with its effects made exactly once. Printed: burst -> first new pod
running a task, burst -> backlog drained, the group's pod-seconds over the run.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from celery_fleet.local.waiting import free_port, wait_until
from tests.e2e.chart import RELEASE, chart_defaults, image_values, install, merge, small_worker, values_file
from tests.e2e.conftest import RecordTiming
from tests.e2e.host import (
    ClusterPrometheus,
    Keda,
    PrometheusAdapter,
    external_metric,
    quantity,
    start_prometheus,
    tool,
)
from tests.e2e.kube import Kube, scale_and_wait_overridden
from tests.e2e.timeline import ReplicaTimeline
from tests.e2e.web import Web, assert_exactly_once

FULLNAME = f"{RELEASE}-celery-fleet"
DEFAULT = f"{FULLNAME}-worker-default"
EXPORTS = f"{FULLNAME}-worker-exports"
#: kube-controller-manager --horizontal-pod-autoscaler-sync-period (tests/cluster/e2e.sh).
HPA_SYNC = 5.0
MAX = 5
TARGET = 4  # waiting + held per pod: 2 per process (concurrency 2), celery-fleet's policy
SCALE_DOWN_WINDOW = 10
COOLDOWN = 10
BURST = 30
#: seconds per batch of 10 users: a job of 50 users takes at least 5 s, so one pod alone would
#: need a minute and a half for the burst
STEP_DELAY = "1"
BACKLOG = "celery_fleet_queue_backlog"
GROUP = "celery-fleet/worker-group=default"
QUEUES = "queue_name in (default,periodic)"  # the default group's, as the HPA selects them


def loop_values(mode: str, prometheus_url: str) -> dict[str, Any]:
    default, exports = chart_defaults()["workers"]
    autoscaling = {
        "mode": mode,
        "minReplicas": 0 if mode == "keda" else 1,
        "maxReplicas": MAX,
        "targetBacklogPerWorker": TARGET,
        "pollingInterval": 2,
        "cooldownPeriod": COOLDOWN,
        "prometheus": {"serverAddress": prometheus_url},
        "behavior": {
            "scaleUp": {
                "stabilizationWindowSeconds": 0,
                "policies": [{"type": "Pods", "value": 10, "periodSeconds": 5}],
            },
            "scaleDown": {
                "stabilizationWindowSeconds": SCALE_DOWN_WINDOW,
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 5}],
            },
        },
    }
    exports_scaling = merge(autoscaling, {"minReplicas": 1, "maxReplicas": 2})
    return merge(
        image_values(),
        {
            "django": {
                "extraEnv": [
                    {"name": "JOBS_STEP_DELAY", "value": STEP_DELAY},
                ]
            },
            "exporter": {"serviceMonitor": {"enabled": True, "interval": "1s"}},
            "workers": [
                small_worker(default, autoscaling=autoscaling),
                small_worker(exports, autoscaling=exports_scaling),
            ],
        },
    )


def first_busy(prometheus: ClusterPrometheus, since: float, until: float) -> dict[str, float]:
    """Wall-clock time each worker pod of the default group was first seen running a task, from
    the exporter's per-worker series as Prometheus recorded them (``hostname``: the pod name,
    celery-exporter's host part of the Celery node name ``default@<pod>``)."""
    response = httpx.get(
        f"{prometheus.url}/api/v1/query_range",
        params={
            "query": f'celery_worker_tasks_active{{hostname=~"{DEFAULT}-.*"}} > 0',
            "start": since,
            "end": until,
            "step": "1s",
        },
        timeout=30,
    ).json()
    assert response["status"] == "success", response
    return {
        series["metric"]["hostname"]: float(series["values"][0][0]) for series in response["data"]["result"]
    }


def worker_pods(kube: Kube, namespace: str) -> set[str]:
    return {
        p["metadata"]["name"]
        for p in kube.items("-n", namespace, "pods", "-l", "celery-fleet/worker-group=default")
    }


@pytest.fixture(params=["keda", "hpa"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def loop(
    mode: str, kube: Kube, namespace: str, crds: list[str], tmp_path: Path, record_timing: RecordTiming
) -> Iterator[ClusterPrometheus]:
    """The release in ``mode``, its Prometheus, and the autoscaler of that mode."""
    if mode == "keda" and not tool("keda-operator").exists():
        pytest.fail("KEDA is not built: tests/cluster/build-autoscalers.sh keda")
    port = free_port(kube.host_address)
    values = loop_values(mode, f"http://{kube.host_address}:{port}")
    began = time.monotonic()
    install(kube, namespace, values_file(tmp_path, mode, values))
    record_timing(f"{mode}: helm install --wait", time.monotonic() - began)
    began = time.monotonic()
    prometheus = start_prometheus(kube, namespace, tmp_path, release=RELEASE, port=port)
    scaler: Keda | PrometheusAdapter
    if mode == "keda":
        scaler = Keda(kube, tmp_path / "keda")
    else:
        scaler = PrometheusAdapter(kube, prometheus.url, tmp_path / "adapter")
    try:
        scaler.start()
        record_timing(
            f"{mode}: Prometheus + {type(scaler).__name__} up (ServiceAccount tokens)",
            time.monotonic() - began,
        )
        yield prometheus
    finally:
        scaler.stop()
        prometheus.stop()


def _scaler_active(kube: Kube, namespace: str, name: str) -> bool:
    if not kube.exists("-n", namespace, "hpa", name):
        return False
    hpa = kube.get("-n", namespace, "hpa", name)
    conditions = {c["type"]: c["status"] for c in hpa.get("status", {}).get("conditions", [])}
    return conditions.get("AbleToScale") == "True" and "ScalingActive" in conditions


def test_burst_scales_workers_up_they_consume_and_scale_back(
    mode: str, loop: ClusterPrometheus, kube: Kube, namespace: str, record_timing: RecordTiming
) -> None:
    prometheus = loop
    minimum = 0 if mode == "keda" else 1
    web = Web.of_release(kube, namespace, f"{FULLNAME}-web")
    for name in (DEFAULT, EXPORTS):
        wait_until(
            functools.partial(_scaler_active, kube, namespace, name),
            timeout=120,
            interval=1,
            what=f"the HPA of {name} to read its metric",
        )

    with ReplicaTimeline(kube, namespace, [DEFAULT, EXPORTS]) as timeline:
        # Idle: the group at its minimum (keda: zero, once beat's first periodic tasks are done).
        timeline.wait_for(DEFAULT, minimum, timeout=COOLDOWN + SCALE_DOWN_WINDOW + 90)
        wait_until(
            lambda: len(kube.ready_pods(namespace, GROUP)) == minimum == len(worker_pods(kube, namespace)),
            timeout=120,
            what="the idle group's pods",
        )
        # With autoscaling on, a manual scale is overwritten (docs/autoscaling.md).
        took = scale_and_wait_overridden(
            kube, namespace, DEFAULT, 3, back_to=minimum, timeout=COOLDOWN + 3 * HPA_SYNC + 60
        )
        record_timing(f"{mode}: kubectl scale to 3 overridden back to {minimum}", took)
        wait_until(
            lambda: len(worker_pods(kube, namespace)) == minimum, timeout=120, what="the extra pods gone"
        )
        before_pods = worker_pods(kube, namespace)
        users_before = web.user_count()

        t0, wall0 = time.monotonic(), time.time()
        ids = web.submit(BURST)
        record_timing(f"{mode}: {BURST} jobs POSTed through the web Service", time.monotonic() - t0)
        if mode == "hpa":
            # what the HPA controller reads through the aggregator: this namespace's series only
            wait_until(
                lambda: (
                    sum(quantity(m["value"]) for m in external_metric(kube, namespace, BACKLOG, QUEUES)) > 0
                ),
                timeout=30,
                what="the External metric to show the burst",
            )
            assert external_metric(kube, "default", BACKLOG, QUEUES) == []
        top = timeline.wait_for(DEFAULT, MAX, timeout=3 * HPA_SYNC + 60)
        record_timing(f"{mode}: burst -> {MAX} replicas (max)", top - t0)
        jobs = web.wait_finished(ids, timeout=300)
        drained = time.monotonic()
        record_timing(f"{mode}: burst -> every job done (drained)", drained - t0)
        down = timeline.wait_for(DEFAULT, minimum, timeout=SCALE_DOWN_WINDOW + COOLDOWN + 3 * HPA_SYNC + 60)
        record_timing(f"{mode}: drained -> back to {minimum} replicas", down - drained)
        wait_until(
            lambda: len(worker_pods(kube, namespace)) == minimum, timeout=120, what="the scaled-in pods gone"
        )
        pod_seconds = timeline.pod_seconds(DEFAULT, t0, time.monotonic())
        record_timing(f"{mode}: pod-seconds of the default group, burst to minimum again", pod_seconds)
        print("default:", timeline.describe(DEFAULT, t0))
        print("exports:", timeline.describe(EXPORTS, t0))

    # Read again: each job's success callback is a task of its own, run after the job (and
    # before the group could scale in: it is backlog too).
    assert set(jobs) == set(ids)
    counts = assert_exactly_once(web.jobs(ids), users_before, web.user_count())
    print(f"{mode}: {counts}")
    assert set(timeline.values(EXPORTS, since=t0)) == {1}, timeline.describe(EXPORTS, t0)

    busy = first_busy(prometheus, wall0 - 5, time.time())
    new = {pod: at for pod, at in busy.items() if pod not in before_pods}
    assert len(new) >= 2, f"pods that ran tasks: {busy} (there before the burst: {before_pods})"
    record_timing(f"{mode}: burst -> first new pod running a task", min(new.values()) - wall0)
    print(
        f"{mode}: pods that ran tasks (s after the burst): "
        + ", ".join(f"{p}: +{t - wall0:.1f}" for p, t in sorted(new.items(), key=lambda x: x[1]))
    )
