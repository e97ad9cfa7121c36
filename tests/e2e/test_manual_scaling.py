"""`kubectl scale` of a worker Deployment with autoscaling off (docs/autoscaling.md,
"Manual scaling and autoscaling"): the scale sticks, and the next `helm upgrade` sets
`replicaCount` again. (With autoscaling on, see test_autoscaling_hpa/keda: overwritten.)"""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.chart import install
from tests.e2e.kube import CHART, Kube
from tests.e2e.timeline import ReplicaTimeline

RELEASE = "fleet"
VALUES = ["-f", str(CHART / "ci" / "autoscaling-off-values.yaml")]
HPA_SYNC = 5.0


def test_kubectl_scale_sticks_with_autoscaling_off(kube: Kube, namespace: str, record_timing: Any) -> None:
    install(kube, RELEASE, namespace, VALUES)
    worker = f"{RELEASE}-celery-fleet-worker-default"
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=celery-fleet"
    # Nothing else owns the replica count: no HPA, no ScaledObject in the release.
    assert kube.items("-n", namespace, "hpa") == []
    assert kube.get("-n", namespace, "deployment", worker)["spec"]["replicas"] == 3

    began = time.monotonic()
    kube.kubectl("-n", namespace, "scale", f"deployment/{worker}", "--replicas=5")
    kube.kubectl("-n", namespace, "rollout", "status", f"deployment/{worker}", "--timeout=60s")
    record_timing("manual: kubectl scale 3 -> 5 pods ready", time.monotonic() - began)
    live = kube.get("-n", namespace, "deployment", worker)
    assert live["status"]["readyReplicas"] == 5
    pods = kube.ready_pods(namespace, f"{selector},app.kubernetes.io/component=worker")
    assert sum(p.startswith(worker) for p in pods) == 5, pods

    # It sticks: several HPA sync periods later it is still 5 (nothing reconciles it back).
    with ReplicaTimeline(kube, namespace, [worker]) as timeline:
        time.sleep(3 * HPA_SYNC)  # observation period, not synchronisation: the timeline records it
    assert set(timeline.values(worker)) == {5}, timeline.describe(worker)

    # The next `helm upgrade` (same values) sets replicaCount again (three-way merge).
    kube.helm("upgrade", RELEASE, str(CHART), "-n", namespace, *VALUES, "--wait", "--timeout", "120s")
    assert kube.get("-n", namespace, "deployment", worker)["spec"]["replicas"] == 3
