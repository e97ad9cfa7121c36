"""`helm install` / `upgrade` / `test` / `uninstall` of the chart against a real kube-apiserver.

The API server does what a unit test of the templates cannot: OpenAPI schema validation of
every object (strict field validation), admission (ServiceAccount, LimitRanger, ...), RBAC on
the objects the release creates, and the controllers turning Deployments, StatefulSets and Jobs
into ready (kwok) pods, which ``helm --wait`` waits for.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_fleet.local.waiting import wait_until
from tests.e2e.chart import (
    CI_VALUES,
    TestPodKubelet,
    install,
    is_hook,
    namespaced_objects,
    wait_rollout,
)
from tests.e2e.kube import CHART, Kube

RELEASE = "fleet"
CHECKSUM = "checksum/config"


def _ref(obj: dict[str, Any]) -> str:
    api = obj["apiVersion"]
    group = api.split("/")[0] if "/" in api else ""
    kind = obj["kind"].lower()
    return f"{kind}.{group}/{obj['metadata']['name']}" if group else f"{kind}/{obj['metadata']['name']}"


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_install_with_each_ci_values_file(
    kube: Kube, namespace: str, crds: list[str], values: Path, record_timing: Any
) -> None:
    began = time.monotonic()
    manifests = install(kube, RELEASE, namespace, ["-f", str(values)])
    record_timing(f"helm install --wait ({values.name})", time.monotonic() - began)

    status = kube.helm("status", RELEASE, "-n", namespace, "-o", "json").stdout
    assert '"status":"deployed"' in status.replace(" ", "")
    # Every object of the release is in the API server, as rendered (hooks are created by `helm test`).
    objects = [m for m in manifests if not is_hook(m)]
    assert objects, "the chart rendered nothing"
    refs = [_ref(obj) for obj in objects]
    found = kube.kubectl("-n", namespace, "get", *refs, "-o", "name").split()
    assert len(found) == len(refs), f"rendered {refs}, the API server has {found}"
    # ... and the workloads are up: every Deployment and StatefulSet has its replicas ready.
    for obj in objects:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        live = kube.get("-n", namespace, _ref(obj))
        want = live["spec"].get("replicas", 1)
        assert live["status"].get("readyReplicas", 0) == want, f"{_ref(obj)}: {live['status']}"
    # The migrations Job ran to completion (kwok completes Job pods).
    for job in (o for o in objects if o["kind"] == "Job"):
        kube.kubectl(
            "-n",
            namespace,
            "wait",
            f"job/{job['metadata']['name']}",
            "--for=condition=Complete",
            "--timeout=60s",
        )


def _pod_templates(kube: Kube, namespace: str, kind: str) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: {
            "generation": o["metadata"]["generation"],
            "annotations": o["spec"]["template"]["metadata"].get("annotations") or {},
            "replicas": o["spec"].get("replicas"),
        }
        for o in kube.items("-n", namespace, kind, "-l", f"app.kubernetes.io/instance={RELEASE}")
    }


def test_upgrade_test_and_uninstall(
    kube: Kube, namespace: str, crds: list[str], tmp_path: Path, record_timing: Any
) -> None:
    values = ["-f", str(CHART / "ci" / "autoscaling-off-values.yaml")]
    began = time.monotonic()
    manifests = install(kube, RELEASE, namespace, values)
    record_timing("lifecycle: helm install --wait", time.monotonic() - began)
    before = _pod_templates(kube, namespace, "deployments")
    stateful_before = _pod_templates(kube, namespace, "statefulsets")
    assert before
    assert all(CHECKSUM in d["annotations"] for d in before.values()), before

    # 1. A changed setting in the shared ConfigMap rolls every Deployment that reads it (its
    #    checksum annotation changes), and nothing else: the StatefulSets keep their pods.
    began = time.monotonic()
    kube.helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        *values,
        "--set",
        "django.logLevel=DEBUG",
        "--wait",
        "--timeout",
        "180s",
    )
    after = _pod_templates(kube, namespace, "deployments")
    assert after.keys() == before.keys()
    for name in before:
        assert after[name]["annotations"][CHECKSUM] != before[name]["annotations"][CHECKSUM], name
        assert after[name]["generation"] == before[name]["generation"] + 1, name
    wait_rollout(kube, namespace, [f"deployment/{n}" for n in after])
    for name in after:
        rs = kube.items("-n", namespace, "replicasets", "-l", f"app.kubernetes.io/instance={RELEASE}")
        owned = [r for r in rs if r["metadata"]["ownerReferences"][0]["name"] == name]
        assert len(owned) == 2, f"{name}: expected the old and a new ReplicaSet, got {len(owned)}"
    assert _pod_templates(kube, namespace, "statefulsets") == stateful_before
    record_timing("lifecycle: helm upgrade (config change) + rollouts", time.monotonic() - began)

    # 2. A change to one workload's own setting rolls that one only.
    before = after
    kube.helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        "--reuse-values",
        "--set",
        "web.replicaCount=3",
        "--wait",
        "--timeout",
        "120s",
    )
    after = _pod_templates(kube, namespace, "deployments")
    changed = {n for n in after if after[n] != before[n]}
    web = [n for n in after if n.endswith("-web")]
    diff = {n: (before[n], after[n]) for n in changed}
    assert changed == set(web), f"only the web Deployment should change, changed: {diff}"
    assert after[web[0]]["replicas"] == 3
    assert after[web[0]]["annotations"] == before[web[0]]["annotations"]  # scaled, not rolled

    # 3. `helm test`: its hook objects are created by the API server and the test pod's
    #    outcome is what helm reports (kwok never runs the container: TestPodKubelet reports
    #    it as exited 0, as a kubelet would).
    hooks = [
        m for m in manifests if "test" in (m["metadata"].get("annotations") or {}).get("helm.sh/hook", "")
    ]
    assert any(h["kind"] == "Pod" for h in hooks), "the chart has no `helm test` pod"
    began = time.monotonic()
    with TestPodKubelet(kube, namespace) as kubelet:
        done = kube.helm("test", RELEASE, "-n", namespace, "--timeout", "90s", check=False)
    record_timing("lifecycle: helm test", time.monotonic() - began)
    assert done.returncode == 0, done.stdout + done.stderr
    test_pods = [h["metadata"]["name"] for h in hooks if h["kind"] == "Pod"]
    assert set(test_pods) <= set(kubelet.seen), (
        f"test pods never seen: {test_pods}, seen {list(kubelet.seen)}"
    )
    for h in hooks:
        assert f"TEST SUITE:     {h['metadata']['name']}" in done.stdout, done.stdout

    # 4. `helm uninstall` leaves only what is documented: the StatefulSets' PVCs (data), and
    #    objects the chart marks `helm.sh/resource-policy: keep` (its generated Secrets, so a
    #    reinstall finds the same passwords as the data in the PVCs).
    kept = {
        f"{m['kind'].lower()}/{m['metadata']['name']}"
        for m in manifests
        if (m["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") == "keep"
    }
    pvcs = {
        f"persistentvolumeclaim/{tpl['metadata']['name']}-{m['metadata']['name']}-{i}"
        for m in manifests
        if m["kind"] == "StatefulSet"
        for tpl in m["spec"].get("volumeClaimTemplates", [])
        for i in range(m["spec"].get("replicas", 1))
    }
    namespace_defaults = {"configmap/kube-root-ca.crt", "serviceaccount/default"}
    began = time.monotonic()
    out = kube.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "120s").stdout
    allowed = pvcs | kept | namespace_defaults

    def only_allowed_left() -> bool:
        return set(namespaced_objects(kube, namespace)) <= allowed

    try:
        wait_until(only_allowed_left, timeout=60, interval=1, what="garbage collection after uninstall")
    except AssertionError:
        extra = sorted(set(namespaced_objects(kube, namespace)) - allowed)
        pytest.fail(f"helm uninstall left undocumented objects behind: {extra}\n{out}")
    record_timing("lifecycle: helm uninstall + GC", time.monotonic() - began)
    left = set(namespaced_objects(kube, namespace))
    assert pvcs <= left, f"PVCs (the data) must survive uninstall: {sorted(pvcs - left)}"
    print(yaml.safe_dump({"left after uninstall": sorted(left)}))
