"""Installing the chart into the e2e cluster: the values a one-node cluster without a registry
needs, and what a real cluster would provide around the release (storage, external Secrets)."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.kube import CHART, Kube, persistent_volumes_for, rendered

CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
HOOK = "helm.sh/hook"
RELEASE = "fleet"

#: The images the node runs, built locally and imported into its containerd by
#: tests/cluster/e2e.sh (`make image-local`, docker/standins/): no registry anywhere.
APP_IMAGE = os.environ.get("CELERY_FLEET_E2E_IMAGE", "celery-fleet:e2e")
REDIS_IMAGE = os.environ.get("CELERY_FLEET_E2E_REDIS_IMAGE", "celery-fleet-redis:e2e")
POSTGRES_IMAGE = os.environ.get("CELERY_FLEET_E2E_POSTGRES_IMAGE", "celery-fleet-postgres:e2e")


def _image(ref: str) -> dict[str, str]:
    repository, _, tag = ref.rpartition(":")
    return {"repository": repository, "tag": tag}


def image_values() -> dict[str, Any]:
    """Only what points the chart at the local images; every other value is the chart's default.
    (The stand-ins replace the official redis and postgres images, which cannot be pulled here.)"""
    return {
        "image": _image(APP_IMAGE),
        "broker": {"image": _image(REDIS_IMAGE)},
        "database": {"image": _image(POSTGRES_IMAGE)},
    }


def merge(base: Mapping[str, Any], *overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of values dicts (later wins; lists are replaced, as helm does)."""
    out = copy.deepcopy(dict(base))
    for override in overrides:
        for key, value in override.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def small_worker(group: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """A worker group sized for a shared 2-core node: small CPU requests (so several replicas
    schedule), two processes, a short drain window (the suite's waits stay short)."""
    return merge(
        group,
        {
            "concurrency": 2,
            "resources": {"requests": {"cpu": "25m", "memory": "128Mi"}},
            "timings": {"softTimeLimit": 50, "timeLimit": 60, "drainWindow": 10},
        },
        changes,
    )


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
    before installing. Placeholder values: only server-side dry runs use them (no pod reads them)."""
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


def values_file(tmp_path: Path, name: str, values: Mapping[str, Any]) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(values), sort_keys=False), encoding="utf-8")
    return path


def load_ci_values(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "ci" / name).read_text(encoding="utf-8")) or {})


def chart_defaults() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8")))


def install(
    kube: Kube,
    namespace: str,
    values: Path,
    *,
    release: str = RELEASE,
    timeout: str = "420s",
) -> list[dict[str, Any]]:
    """Storage for the StatefulSets first (the cluster has no provisioner), then
    ``helm install --wait``: every Deployment and StatefulSet ready by its pods' own probes."""
    helm_args = ["-f", str(values)]
    manifests = rendered(kube, release, namespace, helm_args)
    volumes = persistent_volumes_for(manifests, namespace, kube.cluster_home / "volumes")
    if volumes:
        kube.apply(volumes)
    helm_wait(kube, namespace, "install", release, *helm_args, timeout=timeout)
    return manifests


def upgrade(kube: Kube, namespace: str, *args: str, release: str = RELEASE, timeout: str = "300s") -> None:
    helm_wait(kube, namespace, "upgrade", release, *args, timeout=timeout)


def helm_wait(kube: Kube, namespace: str, verb: str, release: str, *args: str, timeout: str) -> None:
    """``helm install|upgrade --wait``; on failure, why the pods are not ready."""
    try:
        kube.helm(
            verb,
            release,
            str(CHART),
            "-n",
            namespace,
            *args,
            "--wait",
            "--timeout",
            timeout,
            timeout=float(timeout.rstrip("s")) + 60,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{describe_unready(kube, namespace)}") from None


def describe_unready(kube: Kube, namespace: str) -> str:
    """Why pods are not ready: their phase, container states, the last events and log lines."""
    lines = []
    for pod in kube.items("-n", namespace, "pods"):
        name = pod["metadata"]["name"]
        status = pod.get("status", {})
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
        if ready or status.get("phase") == "Succeeded":
            continue
        states = [
            f"{c['name']}: {next(iter(c.get('state', {})), '?')} {c.get('state', {})}"
            for c in status.get("initContainerStatuses", []) + status.get("containerStatuses", [])
        ]
        lines.append(f"pod {name} {status.get('phase')}: {'; '.join(states)}")
        for container in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
            log = kube.run(
                ["kubectl", "-n", namespace, "logs", name, "-c", container["name"], "--tail=15"], check=False
            )
            if log.stdout.strip():
                lines.append(f"  --- {container['name']} log:\n{log.stdout.rstrip()}")
    events = kube.run(
        [
            "kubectl",
            "-n",
            namespace,
            "get",
            "events",
            "--sort-by=.lastTimestamp",
            "-o",
            "custom-columns=AGE:.lastTimestamp,OBJ:.involvedObject.name,REASON:.reason,MSG:.message",
        ],
        check=False,
    ).stdout.splitlines()[-25:]
    return "\n".join([*lines, "events:", *events])


def namespaced_objects(kube: Kube, namespace: str) -> list[str]:
    """Every object in the namespace (``kind/name``), events left out."""
    kinds = kube.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").split()
    kinds = [k for k in kinds if k not in ("events", "events.events.k8s.io")]
    out = kube.kubectl("get", ",".join(kinds), "-n", namespace, "-o", "name", "--ignore-not-found")
    return sorted(out.split())


def wait_rollout(kube: Kube, namespace: str, kind_names: Iterable[str], timeout: int = 300) -> None:
    began = time.monotonic()
    for kind_name in kind_names:
        left = max(5, int(timeout - (time.monotonic() - began)))
        kube.kubectl("-n", namespace, "rollout", "status", kind_name, f"--timeout={left}s", timeout=left + 10)
