"""kubectl and helm against the e2e cluster (tests/cluster): thin, loud wrappers.

Every call runs the real binaries (kubectl built by tests/cluster/build.sh, helm from
tests/support/helm.py) against the cluster's kubeconfig; a failing command raises with its
stderr so a test failure says what the API server answered.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from celery_fleet.local.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
#: The chart under test (CELERY_FLEET_E2E_CHART: another copy of it, e.g. to try a fix).
CHART = Path(os.environ.get("CELERY_FLEET_E2E_CHART") or REPO / "helm" / "celery-fleet")
CLUSTER_SH = REPO / "tests" / "cluster" / "cluster.sh"


class CommandFailed(AssertionError):
    pass


def cluster_env() -> dict[str, str]:
    """KUBECONFIG and PATH for the cluster tools: from the environment, else from ``cluster.sh env``."""
    env = dict(os.environ)
    if env.get("KUBECONFIG") and Path(env["KUBECONFIG"]).is_file():
        return env
    out = subprocess.run([str(CLUSTER_SH), "env"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.replace("${PATH}", os.environ.get("PATH", ""))
    return env


@dataclass
class Kube:
    env: dict[str, str]

    @property
    def kubeconfig(self) -> str:
        return self.env["KUBECONFIG"]

    @property
    def host_address(self) -> str:
        """This host's address on the cluster's network: where kube-apiserver listens, and what
        pods and the API server's aggregator reach a server on this host by."""
        config = yaml.safe_load(Path(self.kubeconfig).read_text(encoding="utf-8"))
        return str(urllib.parse.urlsplit(config["clusters"][0]["cluster"]["server"]).hostname)

    @property
    def cluster_home(self) -> Path:
        """The cluster's folder (tests/cluster/lib.sh CLUSTER_HOME): the kubeconfig lives in it."""
        return Path(self.kubeconfig).parent

    def run(
        self, argv: Sequence[str], *, input: str | None = None, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check and done.returncode != 0:
            raise CommandFailed(
                f"`{' '.join(argv)}` exited with {done.returncode}\nstdout:\n{done.stdout[-3000:]}"
                f"\nstderr:\n{done.stderr[-3000:]}"
            )
        return done

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 60, check: bool = True) -> str:
        return self.run(["kubectl", *args], input=input, timeout=timeout, check=check).stdout

    def helm(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["helm", *args], timeout=timeout, check=check)

    def get(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", *args, "-o", "json")))

    def items(self, *args: str) -> list[dict[str, Any]]:
        return list(self.get(*args).get("items", []))

    def exists(self, *args: str) -> bool:
        return self.run(["kubectl", "get", *args, "-o", "name"], check=False).returncode == 0

    def apply(self, objects: Iterable[Mapping[str, Any]], *, server_side: bool = False) -> str:
        docs = yaml.safe_dump_all([dict(o) for o in objects])
        extra = ["--server-side", "--force-conflicts"] if server_side else []
        return self.kubectl("apply", *extra, "-f", "-", input=docs)

    def replicas(self, namespace: str, deployment: str) -> int:
        spec = self.get("-n", namespace, "deployment", deployment)["spec"]
        return int(spec.get("replicas", 1))

    def ready_pods(self, namespace: str, selector: str) -> list[str]:
        pods = self.items("-n", namespace, "pods", "-l", selector)
        return [
            p["metadata"]["name"]
            for p in pods
            if p["metadata"].get("deletionTimestamp") is None
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions", [])
            )
        ]


def rendered(kube: Kube, release: str, namespace: str, helm_args: Sequence[str]) -> list[dict[str, Any]]:
    """The chart's manifests for these values, as ``helm template`` renders them (hooks included)."""
    out = kube.helm("template", release, str(CHART), "--namespace", namespace, *helm_args, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def persistent_volumes_for(
    manifests: Iterable[Mapping[str, Any]], namespace: str, root: Path
) -> list[dict[str, Any]]:
    """A pre-bound hostPath PV for every claim the chart's StatefulSets will create.

    The cluster has no storage provisioner; a PV whose ``claimRef`` names the claim
    ``<template>-<statefulset>-<ordinal>`` is bound to it by kube-controller-manager's PV
    controller as soon as the StatefulSet controller creates the claim, as a provisioner would.
    Its folder (under ``root``) is made here and given to the pod's user and ``fsGroup``, as a
    provisioner's volume would be after the kubelet applied ``fsGroup`` (it does not for
    hostPath).
    """
    volumes = []
    for m in manifests:
        if m.get("kind") != "StatefulSet":
            continue
        sts = m["metadata"]["name"]
        security = m["spec"]["template"]["spec"].get("securityContext") or {}
        for ordinal in range(int(m["spec"].get("replicas", 1))):
            for tpl in m["spec"].get("volumeClaimTemplates", []):
                claim = f"{tpl['metadata']['name']}-{sts}-{ordinal}"
                folder = root / namespace / claim
                folder.mkdir(parents=True, exist_ok=True)
                os.chown(folder, int(security.get("runAsUser", 0)), int(security.get("fsGroup", 0)))
                folder.chmod(0o770)
                spec = tpl["spec"]
                volumes.append(
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolume",
                        "metadata": {
                            "name": f"{namespace}-{claim}",
                            "labels": {"celery-fleet-e2e/namespace": namespace},
                        },
                        "spec": {
                            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                            "accessModes": spec.get("accessModes", ["ReadWriteOnce"]),
                            "storageClassName": spec.get("storageClassName") or "",
                            "persistentVolumeReclaimPolicy": "Retain",
                            "hostPath": {"path": str(folder), "type": "Directory"},
                            "claimRef": {"namespace": namespace, "name": claim},
                        },
                    }
                )
    return volumes


def scale_and_wait_overridden(
    kube: Kube, namespace: str, deployment: str, replicas: int, *, back_to: int, timeout: float
) -> float:
    """``kubectl scale`` to ``replicas``, then wait until something else (the HPA, KEDA) has set
    ``back_to`` again; return the seconds that took. The Deployment's generation proves both
    writes happened, however quickly the second followed the first."""
    before = kube.get("-n", namespace, "deployment", deployment)["metadata"]["generation"]
    began = time.monotonic()
    out = kube.kubectl(
        "-n", namespace, "scale", f"deployment/{deployment}", f"--replicas={replicas}", "-o", "json"
    )
    assert json.loads(out)["spec"]["replicas"] == replicas

    def overridden() -> bool:
        live = kube.get("-n", namespace, "deployment", deployment)
        return bool(live["metadata"]["generation"] >= before + 2 and live["spec"].get("replicas") == back_to)

    wait_until(
        overridden,
        timeout=timeout,
        interval=0.2,
        what=f"{deployment} scaled to {replicas}, then back to {back_to}",
    )
    return time.monotonic() - began
