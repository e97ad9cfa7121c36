"""The chart with its default values (plus the local images) on a real kubelet: every pod
Ready by its own probes, the migrations Job done before web and workers start (their init
containers wait for it), the web answering through its Service from this host and from a pod,
`helm test` running its real script (and failing when the web is down), `helm uninstall`
leaving only what is documented.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_fleet.local.waiting import wait_until
from tests.e2e.chart import RELEASE, image_values, install, is_hook, namespaced_objects, upgrade, values_file
from tests.e2e.conftest import RecordTiming
from tests.e2e.kube import Kube
from tests.e2e.web import Web

FULLNAME = f"{RELEASE}-celery-fleet"
WEB = f"{FULLNAME}-web"


@pytest.fixture(scope="module")
def release(
    kube: Kube, module_namespace: str, tmp_path_factory: pytest.TempPathFactory, record_timing: RecordTiming
) -> tuple[str, list[dict[str, Any]]]:
    values = values_file(tmp_path_factory.mktemp("release"), "images", image_values())
    began = time.monotonic()
    manifests = install(kube, module_namespace, values)
    record_timing("release: helm install --wait (default values, real pods)", time.monotonic() - began)
    return module_namespace, manifests


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def test_every_pod_ready_by_its_own_probes(kube: Kube, release: tuple[str, list[dict[str, Any]]]) -> None:
    namespace, manifests = release
    pods = kube.items("-n", namespace, "pods")
    workloads = [m for m in manifests if m["kind"] in ("Deployment", "StatefulSet") and not is_hook(m)]
    want = sum(int(m["spec"].get("replicas", 1)) for m in workloads)
    running = [p for p in pods if p["status"].get("phase") == "Running"]
    assert len(running) == want, [p["metadata"]["name"] for p in running]
    for pod in running:
        name = pod["metadata"]["name"]
        assert _ready(pod), f"{name} is not Ready: {pod['status']}"
        for container, status in zip(
            pod["spec"]["containers"], pod["status"]["containerStatuses"], strict=True
        ):
            # Ready was reported by the kubelet after the container's own readiness probe passed
            # (a container without one would be Ready as soon as it started).
            assert "readinessProbe" in container, (name, container["name"])
            assert status["ready"], (name, status)
            if status["restartCount"]:
                previous = kube.run(
                    [
                        "kubectl",
                        "-n",
                        namespace,
                        "logs",
                        name,
                        "-c",
                        container["name"],
                        "--previous",
                        "--tail=30",
                    ],
                    check=False,
                )
                pytest.fail(
                    f"{name}/{container['name']} restarted: {status.get('lastState')}\n{previous.stdout}"
                )
            assert "running" in status["state"], (name, status["state"])
        # init containers (waiting for the migrations) ran to completion with exit 0
        for status in pod["status"].get("initContainerStatuses", []):
            assert status["state"].get("terminated", {}).get("exitCode") == 0, (name, status)

    job = next(m for m in manifests if m["kind"] == "Job")
    live = kube.get("-n", namespace, "job", job["metadata"]["name"])
    assert live["status"].get("succeeded") == 1, live["status"]
    log = kube.kubectl("-n", namespace, "logs", f"job/{job['metadata']['name']}")
    assert "Applying" in log or "No migrations to apply" in log, log[-2000:]


def test_web_answers_through_its_service_from_the_host_and_from_a_pod(
    kube: Kube, release: tuple[str, list[dict[str, Any]]], record_timing: RecordTiming
) -> None:
    namespace, _ = release
    web = Web.of_release(kube, namespace, WEB)
    assert web.ready()
    began = time.monotonic()
    (job_id,) = web.submit(1)
    job = web.job_done(job_id, timeout=60)
    assert job["state"] == "SUCCESS", job
    record_timing("release: one job through the web Service, done by a worker pod", time.monotonic() - began)

    # From inside the cluster: a worker pod resolves the Service through CoreDNS and reaches it
    # through kube-proxy, as the helm test pod and any other client in the cluster would.
    worker = kube.ready_pods(namespace, "app.kubernetes.io/component=worker")[0]
    url = f"http://{WEB}.{namespace}.svc.cluster.local/readyz"
    probe = f"import json, urllib.request; print(json.load(urllib.request.urlopen({url!r}, timeout=10)))"
    out = kube.kubectl("-n", namespace, "exec", worker, "-c", "worker", "--", "python", "-c", probe)
    assert "'status': 'ok'" in out, out


def test_helm_test_runs_its_script_and_fails_when_the_web_is_down(
    kube: Kube, release: tuple[str, list[dict[str, Any]]], tmp_path: Path, record_timing: RecordTiming
) -> None:
    namespace, manifests = release
    test_pod = next(m["metadata"]["name"] for m in manifests if m["kind"] == "Pod" and is_hook(m))
    began = time.monotonic()
    done = kube.helm("test", RELEASE, "-n", namespace, "--timeout", "300s", check=False, timeout=360)
    record_timing("release: helm test (a real job through the API)", time.monotonic() - began)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"TEST SUITE:     {test_pod}" in done.stdout, done.stdout
    assert "Phase:          Succeeded" in done.stdout, done.stdout

    # The web down (no endpoints behind its Service): the same script must fail. A short test
    # timeout is a value of the test hook only, so the upgrade rolls nothing.
    generations = {
        d["metadata"]["name"]: d["metadata"]["generation"] for d in kube.items("-n", namespace, "deployments")
    }
    upgrade(kube, namespace, "--reuse-values", "--set", "tests.timeoutSeconds=15")
    after = {
        d["metadata"]["name"]: d["metadata"]["generation"] for d in kube.items("-n", namespace, "deployments")
    }
    assert after == generations
    replicas = kube.replicas(namespace, WEB)
    kube.kubectl("-n", namespace, "scale", f"deployment/{WEB}", "--replicas=0")
    wait_until(
        lambda: not kube.items("-n", namespace, "pods", "-l", "app.kubernetes.io/component=web"),
        timeout=120,
        what="the web pods to be gone",
    )
    try:
        began = time.monotonic()
        failed = kube.helm("test", RELEASE, "-n", namespace, "--timeout", "120s", check=False, timeout=180)
        record_timing("release: helm test with the web down (fails)", time.monotonic() - began)
        assert failed.returncode != 0, failed.stdout
        pod = kube.get("-n", namespace, "pod", test_pod)  # kept: the hook is deleted only on success
        assert pod["status"]["phase"] == "Failed", pod["status"]
        log = kube.kubectl("-n", namespace, "logs", test_pod)
        assert "could not submit a job" in log, log
    finally:
        kube.kubectl("-n", namespace, "scale", f"deployment/{WEB}", f"--replicas={replicas}")
        kube.kubectl("-n", namespace, "rollout", "status", f"deployment/{WEB}", "--timeout=180s", timeout=200)
    assert (
        kube.helm("test", RELEASE, "-n", namespace, "--timeout", "300s", check=False, timeout=360).returncode
        == 0
    )


def test_uninstall_leaves_only_the_data_and_the_kept_secrets(
    kube: Kube, release: tuple[str, list[dict[str, Any]]], record_timing: RecordTiming
) -> None:
    namespace, manifests = release
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
    out = kube.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "180s", timeout=240).stdout
    allowed = pvcs | kept | namespace_defaults

    def only_allowed_left() -> bool:
        return set(namespaced_objects(kube, namespace)) <= allowed

    try:
        wait_until(only_allowed_left, timeout=120, interval=1, what="garbage collection after uninstall")
    except AssertionError:
        extra = sorted(set(namespaced_objects(kube, namespace)) - allowed)
        pytest.fail(f"helm uninstall left undocumented objects behind: {extra}\n{out}")
    record_timing("release: helm uninstall + every pod gone", time.monotonic() - began)
    left = set(namespaced_objects(kube, namespace))
    assert pvcs <= left, f"PVCs (the data) must survive uninstall: {sorted(pvcs - left)}"
    print(yaml.safe_dump({"left after uninstall": sorted(left)}))
