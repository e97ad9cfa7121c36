"""Installing the chart into the kwok cluster: what a real cluster would provide around it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.kube import CHART, Kube, persistent_volumes_for, rendered

CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
HOOK = "helm.sh/hook"


def is_hook(obj: Mapping[str, Any]) -> bool:
    return HOOK in (obj.get("metadata", {}).get("annotations") or {})


def referenced_secrets(manifests: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    """Secrets (name -> keys) the pod templates read: envFrom, env valueFrom, volumes."""
    found: dict[str, set[str]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "secretKeyRef" in node and isinstance(node["secretKeyRef"], dict):
                ref = node["secretKeyRef"]
                found.setdefault(ref["name"], set()).add(ref["key"])
            if "secretRef" in node and isinstance(node["secretRef"], dict):
                found.setdefault(node["secretRef"]["name"], set())
            if "secret" in node and isinstance(node["secret"], dict) and "secretName" in node["secret"]:
                found.setdefault(node["secret"]["secretName"], set())
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for m in manifests:
        walk(m.get("spec", {}))
    return found


def external_secrets(manifests: Sequence[Mapping[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """The Secrets a values file says exist already (``existingSecret``): what an operator creates
    before installing. Placeholder values: kwok never starts a container that would read them."""
    own = {m["metadata"]["name"] for m in manifests if m.get("kind") == "Secret"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": {key: f"e2e-placeholder-{key}" for key in sorted(keys)},
        }
        for name, keys in sorted(referenced_secrets(manifests).items())
        if name not in own
    ]


def prepare(kube: Kube, release: str, namespace: str, helm_args: Sequence[str]) -> list[dict[str, Any]]:
    """Render, then create what the cluster must already have: pre-bound PVs, external Secrets."""
    manifests = rendered(kube, release, namespace, helm_args)
    extra = persistent_volumes_for(manifests, namespace) + external_secrets(manifests, namespace)
    if extra:
        kube.apply(extra)
    return manifests


def install(
    kube: Kube, release: str, namespace: str, helm_args: Sequence[str], *, timeout: str = "180s"
) -> list[dict[str, Any]]:
    manifests = prepare(kube, release, namespace, helm_args)
    kube.helm("install", release, str(CHART), "-n", namespace, *helm_args, "--wait", "--timeout", timeout)
    return manifests


def values_file(tmp_path: Path, name: str, values: Mapping[str, Any]) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(values), sort_keys=False), encoding="utf-8")
    return path


def load_ci_values(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "ci" / name).read_text(encoding="utf-8")) or {})


class TestPodKubelet:
    """Plays the kubelet for ``helm test`` pods: kwok runs pods forever, so a bare test Pod
    would never finish. Each hook pod seen Running is recorded and its status set to
    ``Succeeded`` (what the kubelet reports when the container exits 0)."""

    __test__ = False  # not a pytest class

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.seen: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TestPodKubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for pod in self.kube.items("-n", self.namespace, "pods"):
                    name = pod["metadata"]["name"]
                    if not is_hook(pod):
                        continue
                    self.seen.setdefault(name, pod)
                    if pod.get("status", {}).get("phase") == "Running":
                        self.kube.kubectl(
                            "-n",
                            self.namespace,
                            "patch",
                            "pod",
                            name,
                            "--subresource=status",
                            "--type=merge",
                            "-p",
                            '{"status":{"phase":"Succeeded"}}',
                            check=False,
                        )
            except Exception:  # the API server may be busy; try again
                pass
            self._stop.wait(0.5)


def namespaced_objects(kube: Kube, namespace: str) -> list[str]:
    """Every object in the namespace (``kind/name``), events left out."""
    kinds = kube.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").split()
    kinds = [k for k in kinds if k not in ("events", "events.events.k8s.io")]
    out = kube.kubectl("get", ",".join(kinds), "-n", namespace, "-o", "name", "--ignore-not-found")
    return sorted(out.split())


def wait_rollout(kube: Kube, namespace: str, kind_names: Iterable[str], timeout: int = 120) -> None:
    began = time.monotonic()
    for kind_name in kind_names:
        left = max(5, int(timeout - (time.monotonic() - began)))
        kube.kubectl("-n", namespace, "rollout", "status", kind_name, f"--timeout={left}s", timeout=left + 10)
