"""Keep ``controller.kubernetes.io/pod-deletion-cost`` on worker pods up to date: idle pods cheapest.

When a Deployment scales in, its ReplicaSet deletes pods that are not ready first and then,
among ready pods, the ones with the lowest deletion cost.  Every worker pod gets a cost from
how many tasks it is running, so the autoscaler's scale-down removes idle workers and a busy
one only when no idle one is left (it then drains: see ``celery_fleet.lifecycle``).

Where busy-ness comes from: **Celery worker heartbeats**.  Every worker sends a
``worker-heartbeat`` event every 2 s (even with task events off) carrying ``active``, the
number of tasks its pool is running.  One event receiver reads them for the whole fleet over
the broker (``celery_fleet.event_stream``, the exporter's rules: alive within three beats,
at least 10 s): no per-pod scraping, no exec, no extra port.  The
sender's hostname is the worker's node name, ``<name>@<host>``; in a pod ``<host>`` is the pod
name (the chart keeps Celery's default ``celery@%h`` or any ``<name>@%h``), which is how a
heartbeat is matched to its pod.  The alternatives are worse: the broker's ``unacked`` hash
does not say which worker holds a message; ``celery inspect active`` is a broadcast round trip
with a timeout per call; a per-pod HTTP endpoint would need a port and a Service.

Costs: ``min(active, levels)`` (``levels`` = 1: idle 0, busy 1).  Pods with no fresh heartbeat
(starting, wedged or gone) cost 0.  The annotation is patched only when its value changes,
and not at all while the event stream itself is silent (a broker outage must not rewrite
every pod's cost).  Kubernetes asks that this annotation not be updated on every metric
change; with ``levels`` = 1 a pod's cost flips only when it goes between idle and busy, and
at most once per ``--interval``.

RBAC (the chart's Role): ``get``, ``list`` and ``patch`` on ``pods`` in the release namespace.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import click

from celery_fleet.event_stream import EventStream, WorkerTable, host_of

logger = logging.getLogger("celery_fleet.deletion_cost")

ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def deletion_cost(active: int | None, *, levels: int = 1) -> int:
    """The pod's cost from the tasks it runs: idle (or unknown) 0, busy up to ``levels``."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if active is None or active <= 0:
        return 0
    return min(active, levels)


def pod_for_hostname(hostname: str, pods: Iterable[str]) -> str | None:
    """The pod a worker node name belongs to: its host part, or that host's first DNS label."""
    names = set(pods)
    host = host_of(hostname)
    if host in names:
        return host
    first = host.split(".", 1)[0]
    return first if first in names else None


def plan_patches(
    pods: Mapping[str, str | None], active_by_hostname: Mapping[str, int | None], *, levels: int = 1
) -> dict[str, str]:
    """``{pod: new annotation value}`` for the pods whose cost changed.

    ``pods`` maps each worker pod to its current annotation value (None when absent);
    ``active_by_hostname`` maps worker node names to their running task count (None: stale).
    """
    active_by_pod: dict[str, int] = {}
    for hostname, active in active_by_hostname.items():
        pod = pod_for_hostname(hostname, pods)
        if pod is not None and active is not None:
            active_by_pod[pod] = active_by_pod.get(pod, 0) + active
    patches: dict[str, str] = {}
    for pod, current in pods.items():
        wanted = str(deletion_cost(active_by_pod.get(pod), levels=levels))
        if current != wanted:
            patches[pod] = wanted
    return patches


def load_kubernetes_config() -> None:
    """In-cluster service account first, then the local kubeconfig."""
    config: Any = importlib.import_module("kubernetes.config")
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def current_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip()
    except OSError:
        pass
    try:
        config: Any = importlib.import_module("kubernetes.config")
        _, context = config.list_kube_config_contexts()
        return str(context.get("context", {}).get("namespace") or "default")
    except Exception:
        return "default"


class DeletionCostController:
    def __init__(
        self,
        core_v1: Any,
        namespace: str,
        selector: str,
        workers: WorkerTable,
        *,
        levels: int = 1,
    ) -> None:
        self.api = core_v1
        self.namespace = namespace
        self.selector = selector
        self.workers = workers
        self.levels = levels

    def worker_pods(self) -> dict[str, str | None]:
        pods = self.api.list_namespaced_pod(self.namespace, label_selector=self.selector)
        return {
            p.metadata.name: (p.metadata.annotations or {}).get(ANNOTATION)
            for p in pods.items
            if p.metadata.deletion_timestamp is None and (p.status is None or p.status.phase != "Succeeded")
        }

    def reconcile(self) -> dict[str, str]:
        """Patch the pods whose cost changed; return what was patched."""
        if self.workers.stream_silent():
            silent = self.workers.silent_for()
            logger.warning("no worker events for %s: leaving deletion costs as they are", _ago(silent))
            return {}
        patches = plan_patches(self.worker_pods(), self.workers.active_by_hostname(), levels=self.levels)
        done: dict[str, str] = {}
        for pod, value in patches.items():
            try:
                self.api.patch_namespaced_pod(
                    pod, self.namespace, {"metadata": {"annotations": {ANNOTATION: value}}}
                )
            except Exception as exc:  # the pod may be gone already; try the others
                logger.warning("could not patch %s: %r", pod, exc)
                continue
            done[pod] = value
            logger.info("pod %s: %s=%s", pod, ANNOTATION, value)
        return done


def _ago(seconds: float | None) -> str:
    return "ever" if seconds is None else f"{seconds:.0f}s"


@click.command("deletion-cost")
@click.option("--namespace", envvar="POD_NAMESPACE", default=None, help="Default: the pod's own namespace.")
@click.option(
    "--selector",
    required=True,
    envvar="CELERY_FLEET_WORKER_SELECTOR",
    help="Label selector of the worker pods, e.g. app.kubernetes.io/component=worker.",
)
@click.option(
    "--broker-url", envvar="CELERY_BROKER_URL", required=True, help="Broker to read worker events from."
)
@click.option("--interval", type=click.FloatRange(min=1.0), default=10.0, show_default=True, help="Seconds.")
@click.option("--levels", type=click.IntRange(min=1, max=1000), default=1, show_default=True)
@click.option("--once", is_flag=True, help="Listen one interval, reconcile once, exit (for checks).")
def deletion_cost_command(
    namespace: str | None, selector: str, broker_url: str, interval: float, levels: int, once: bool
) -> None:
    """Keep pod-deletion-cost on worker pods from how busy each is, so scale-in removes idle ones."""
    from kubernetes import client

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_kubernetes_config()
    namespace = namespace or current_namespace()
    workers = WorkerTable()
    listener = EventStream(broker_url, [workers.on_event], name="deletion-cost-events")
    listener.start()
    controller = DeletionCostController(client.CoreV1Api(), namespace, selector, workers, levels=levels)
    click.echo(f"deletion-cost: pods {selector!r} in {namespace}, every {interval:g}s")
    stop = threading.Event()
    try:
        while not stop.wait(interval):
            try:
                controller.reconcile()
            except Exception as exc:  # API server hiccup: try again next interval
                logger.warning("reconcile failed: %r", exc)
            if once:
                break
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop(timeout=10)
