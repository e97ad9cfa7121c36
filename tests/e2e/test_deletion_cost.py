"""`celery-fleet deletion-cost` patching real pod objects, with the chart's own RBAC.

The component runs on the host (kwok pods run nothing) with the command line the chart gives
its Deployment, authenticated as the chart's ServiceAccount (a token from the TokenRequest
API), so its Role (get/list/patch pods in the release namespace) is what allows it. Real
Celery workers on the host carry the pod names as their node names (``default@<pod>``, as the
chart's ``--hostname {group}@$(POD_NAME)`` does): one runs a long task, one idles. Then the
ReplicaSet controller, scaling in, must keep the busy pod.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from celery_fleet import roles
from celery_fleet.autoscale.deletion_cost import ANNOTATION
from celery_fleet.lifecycle import READY_FILE
from celery_fleet.local.processes import ManagedProcess, file_sink
from celery_fleet.local.waiting import wait_until
from tests.e2e.chart import install
from tests.e2e.host import celery_fleet_cli
from tests.e2e.kube import CHART, Kube
from tests.support.fleet import EXAMPLE, Fleet

RELEASE = "fleet"
VALUES = ["-f", str(CHART / "ci" / "autoscaling-off-values.yaml")]  # deletionCost.enabled: true


def _service_account_kubeconfig(kube: Kube, namespace: str, account: str, path: Path) -> Path:
    admin = yaml.safe_load(Path(kube.kubeconfig).read_text(encoding="utf-8"))
    token = kube.kubectl("-n", namespace, "create", "token", account, "--duration=1h").strip()
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "e2e", "user": account, "namespace": namespace}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _start_worker(fleet: Fleet, pod: str, queue: str) -> ManagedProcess:
    probe_dir = fleet.data_dir / "probes" / pod
    # A short drain window: at teardown the busy worker hands its task back at once.
    env = roles.worker_env({**fleet.env, "CELERY_FLEET_DRAIN_WINDOW": "1"}, probe_dir)
    argv = roles.worker_argv([queue], app=EXAMPLE.celery_app, hostname=f"default@{pod}", concurrency=1)
    process = ManagedProcess(pod, argv, env=env, sink=file_sink(fleet.log_path)).start()
    fleet.processes.append(process)
    wait_until(lambda: (probe_dir / READY_FILE).exists(), timeout=60, what=f"worker for {pod} to be ready")
    return process


def _costs(kube: Kube, namespace: str, selector: str) -> dict[str, str | None]:
    return {
        p["metadata"]["name"]: (p["metadata"].get("annotations") or {}).get(ANNOTATION)
        for p in kube.items("-n", namespace, "pods", "-l", selector)
        if p["metadata"].get("deletionTimestamp") is None
    }


def test_deletion_cost_patches_pods_and_scale_in_keeps_the_busy_one(
    kube: Kube, namespace: str, fleet: Fleet, tmp_path: Path, record_timing: Any
) -> None:
    manifests = install(kube, RELEASE, namespace, VALUES)
    deployment = next(
        m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"].endswith("-deletion-cost")
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    command = container["command"] + container.get("args", [])
    assert command[:2] == ["celery-fleet", "deletion-cost"], command
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    selector = command[command.index("--selector") + 1]
    worker = f"{RELEASE}-celery-fleet-worker-default"
    group_selector = f"{selector},celery-fleet/worker-group=default"

    pods = sorted(_costs(kube, namespace, group_selector))
    assert len(pods) == 3, pods
    busy_pod, idle_pod, _no_worker_pod = pods
    _start_worker(fleet, busy_pod, "e2e-busy")
    _start_worker(fleet, idle_pod, "e2e-idle")
    enqueue_timed_work(fleet.env["CELERY_BROKER_URL"], "e2e-busy", seconds=120)

    kubeconfig = _service_account_kubeconfig(kube, namespace, account, tmp_path / "sa-kubeconfig.yaml")
    env = {**fleet.env, "KUBECONFIG": str(kubeconfig)}
    argv = [
        celery_fleet_cli(),
        *command[1:],
        "--broker-url",
        fleet.env["CELERY_BROKER_URL"],
        "--interval",
        "2",
    ]
    began = time.monotonic()
    controller = ManagedProcess("deletion-cost", argv, env=env, sink=file_sink(fleet.log_path)).start()
    fleet.processes.append(controller)

    want = {busy_pod: "1", idle_pod: "0", _no_worker_pod: "0"}
    wait_until(
        lambda: _costs(kube, namespace, group_selector) == want or controller.returncode() is not None,
        timeout=60,
        interval=0.5,
        what=f"pod-deletion-cost {want}",
    )
    assert controller.alive(), fleet.logs()[-3000:]
    assert _costs(kube, namespace, group_selector) == want
    record_timing("deletion-cost: annotations patched (busy 1, idle 0)", time.monotonic() - began)
    # Only the worker pods were touched (the selector), with the chart's Role.
    others = _costs(
        kube, namespace, f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component!=worker"
    )
    assert set(others.values()) == {None}, others

    # Scale in 3 -> 1: the ReplicaSet deletes the cheapest pods first; the busy one survives.
    began = time.monotonic()
    kube.kubectl("-n", namespace, "scale", f"deployment/{worker}", "--replicas=1")
    wait_until(
        lambda: list(_costs(kube, namespace, group_selector)) == [busy_pod],
        timeout=60,
        what=f"scale-in to leave only {busy_pod}",
    )
    record_timing("deletion-cost: scale-in 3 -> 1 kept the busy pod", time.monotonic() - began)


def enqueue_timed_work(broker_url: str, queue: str, *, seconds: float) -> None:
    from celery import Celery

    app = Celery("e2e-publisher", broker=broker_url, set_as_current=False)
    app.send_task("jobs.tasks.timed_work", args=["e2e-busy", seconds], queue=queue)
