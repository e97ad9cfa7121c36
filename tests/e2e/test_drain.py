"""Stopping workers for real: the kubelet SIGTERMs worker pods in the middle of tasks and
celery_fleet.drain drains them (they exit as soon as their task ends; the chart's drain window
and grace period bound it). One release, autoscaling off, long jobs (5 s, and 25 s > the drain window):

* scale-in without deletion cost: the ReplicaSet picks busy pods, which finish their task and
  exit within the grace period;
* scale-in with the chart's deletion-cost Deployment on: the idle pods go, the busy one stays;
* a `helm upgrade` that changes an env value mid-burst rolls every Deployment, and beat (on a
  Redis lock, ``Recreate``) sends from exactly one pod across the rollout;
* evictions respect the PodDisruptionBudgets;
* `kubectl scale` sticks while autoscaling is off, until the next `helm upgrade`.

Every job: SUCCESS, its effects exactly once (``tests/e2e/web.py``).
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest

from celery_fleet.autoscale.deletion_cost import ANNOTATION
from celery_fleet.local.waiting import wait_until
from celery_fleet.task_metrics import HOST_SOURCE, SEP, SOURCES_KEY, source_key
from tests.e2e.chart import (
    RELEASE,
    chart_defaults,
    image_values,
    install,
    merge,
    small_worker,
    upgrade,
    values_file,
)
from tests.e2e.conftest import RecordTiming
from tests.e2e.kube import Kube
from tests.e2e.timeline import ReplicaTimeline
from tests.e2e.web import Web, assert_exactly_once

FULLNAME = f"{RELEASE}-celery-fleet"
DEFAULT = f"{FULLNAME}-worker-default"
GROUP = "celery-fleet/worker-group=default"
#: kube-controller-manager --horizontal-pod-autoscaler-sync-period (tests/cluster/e2e.sh).
HPA_SYNC = 5.0
STEP_DELAY = 0.5  # seconds between batches of 10 users (JOBS_STEP_DELAY)
#: A job of this many users takes ~5 s (10 batches): long enough to be stopped in the middle,
#: well within the drain window (so a draining pod finishes it, even on a loaded machine).
LONG_JOB = 100
#: ~25 s: longer than the drain window, so a worker stopped while running it hands it back
#: and another pod runs it again (skipping the users it already made)
LONGER_THAN_DRAIN = 500
DRAIN_WINDOW = 15
GRACE = DRAIN_WINDOW + 10  # the chart's default: drain window + 10 s to requeue and exit
#: the kubelet's own latency around a pod's stop (killing, status update, API round trips)
STOP_SLACK = 10
BEAT_EVERY = 2.0


def drain_values() -> dict[str, Any]:
    default, exports = chart_defaults()["workers"]
    return merge(
        image_values(),
        {
            "django": {
                "extraEnv": [
                    {"name": "JOBS_STEP_DELAY", "value": str(STEP_DELAY)},
                    # beat's cleanup every 2 s: enough sends to see a second beat or a gap
                    {"name": "CLEANUP_EXPORTS_EVERY", "value": str(BEAT_EVERY)},
                ]
            },
            "workers": [
                small_worker(
                    default,
                    queues=["default"],
                    concurrency=1,
                    replicaCount=2,
                    timings={"softTimeLimit": 120, "timeLimit": 150, "drainWindow": DRAIN_WINDOW},
                ),
                small_worker(exports),
                # beat's tasks (every 2 s here) on a group of their own: the default group's
                # pods are busy with the suite's jobs only, so "busy" and "idle" are exact
                small_worker({"name": "periodic", "queues": ["periodic"]}, concurrency=1),
            ],
        },
    )


@dataclass
class Release:
    namespace: str
    web: Web
    values: list[str]

    def broker_url(self, kube: Kube) -> str:
        secret = kube.get("-n", self.namespace, "secret", f"{FULLNAME}-broker")
        password = base64.b64decode(secret["data"]["redis-password"]).decode()
        ip = kube.get("-n", self.namespace, "service", f"{FULLNAME}-broker")["spec"]["clusterIP"]
        return f"redis://:{password}@{ip}:6379/0"


@pytest.fixture(scope="module")
def release(
    kube: Kube, module_namespace: str, tmp_path_factory: pytest.TempPathFactory, record_timing: RecordTiming
) -> Release:
    values = values_file(tmp_path_factory.mktemp("drain"), "drain", drain_values())
    began = time.monotonic()
    install(kube, module_namespace, values)
    record_timing("drain: helm install --wait", time.monotonic() - began)
    return Release(
        module_namespace, Web.of_release(kube, module_namespace, f"{FULLNAME}-web"), ["-f", str(values)]
    )


def worker_pods(kube: Kube, namespace: str) -> dict[str, dict[str, Any]]:
    """The default group's pods that are not being deleted."""
    return {
        p["metadata"]["name"]: p
        for p in kube.items("-n", namespace, "pods", "-l", GROUP)
        if p["metadata"].get("deletionTimestamp") is None
    }


def busy_workers(kube: Kube, namespace: str) -> set[str]:
    """Pods of the default group whose worker runs a task, from the exporter's per-worker series
    (its Service); ``hostname`` is the pod name, celery-exporter's host part of ``default@<pod>``."""
    spec = kube.get("-n", namespace, "service", f"{FULLNAME}-celery-exporter")["spec"]
    text = httpx.get(f"http://{spec['clusterIP']}:{spec['ports'][0]['port']}/metrics", timeout=10).text
    busy = set()
    for line in text.splitlines():
        if line.startswith(f'celery_worker_tasks_active{{hostname="{FULLNAME}-worker-default-') and (
            float(line.rsplit(" ", 1)[1]) > 0
        ):
            busy.add(line.split('"')[1])
    return busy


def wait_gone(kube: Kube, namespace: str, pods: set[str], *, timeout: float) -> dict[str, float]:
    """Seconds until each pod object is gone (the kubelet confirmed its containers stopped)."""
    began, gone = time.monotonic(), dict[str, float]()

    def all_gone() -> bool:
        left = {p["metadata"]["name"] for p in kube.items("-n", namespace, "pods", "-l", GROUP)}
        for pod in pods - left - set(gone):
            gone[pod] = time.monotonic() - began
        return set(gone) == pods

    wait_until(all_gone, timeout=timeout, interval=0.5, what=f"pods {sorted(pods)} to be gone")
    return gone


def scale(kube: Kube, namespace: str, replicas: int) -> None:
    kube.kubectl("-n", namespace, "scale", f"deployment/{DEFAULT}", f"--replicas={replicas}")


def wait_workers(kube: Kube, namespace: str, count: int) -> set[str]:
    wait_until(
        lambda: len(kube.ready_pods(namespace, GROUP)) == count == len(worker_pods(kube, namespace)),
        timeout=180,
        what=f"{count} ready worker pods",
    )
    return set(worker_pods(kube, namespace))


def test_scale_in_without_deletion_cost_busy_pods_drain(
    kube: Kube, release: Release, record_timing: RecordTiming
) -> None:
    namespace = release.namespace
    pods = wait_workers(kube, namespace, 2)
    users_before = release.web.user_count()
    ids = release.web.submit(2, total=LONG_JOB)
    wait_until(lambda: busy_workers(kube, namespace) == pods, timeout=60, what="both workers busy")

    began, wall = time.monotonic(), time.time()
    scale(kube, namespace, 1)
    # the ReplicaSet controller picks the pod to delete (a busy one: there is no other)
    stopped = wait_until(
        lambda: pods - set(worker_pods(kube, namespace)), timeout=30, what="a pod marked for deletion"
    )
    assert len(stopped) == 1, stopped
    gone = wait_gone(kube, namespace, stopped, timeout=GRACE + STOP_SLACK + 30)
    (took,) = gone.values()
    finished = max(
        datetime.fromisoformat(j["finished_at"]).timestamp() for j in release.web.jobs(ids).values()
    )
    record_timing("drain: busy worker pod SIGTERMed -> its task done", finished - wall)
    record_timing("drain: busy worker pod SIGTERMed -> pod gone", took)
    assert took <= GRACE + STOP_SLACK, f"the pod took {took:.1f}s to stop (grace {GRACE}s)"
    jobs = release.web.wait_finished(ids, timeout=120)
    assert_exactly_once(release.web.jobs(jobs), users_before, release.web.user_count())
    # The stopped pod drained: its task finished there, nothing was handed back and rerun.
    assert all(j["attempts"] == 1 for j in release.web.jobs(ids).values()), release.web.jobs(ids)
    record_timing("drain: scale-in 2 -> 1 with both busy, jobs done", time.monotonic() - began)


def deployment_pods(kube: Kube, namespace: str) -> set[str]:
    """Pods of the release's Deployments (owned by a ReplicaSet)."""
    return {
        p["metadata"]["name"]
        for p in kube.items("-n", namespace, "pods")
        if any(o["kind"] == "ReplicaSet" for o in p["metadata"].get("ownerReferences", []))
    }


def costs(kube: Kube, namespace: str) -> dict[str, str | None]:
    return {
        name: (p["metadata"].get("annotations") or {}).get(ANNOTATION)
        for name, p in worker_pods(kube, namespace).items()
    }


def test_scale_in_with_deletion_cost_removes_idle_pods_first(
    kube: Kube, release: Release, record_timing: RecordTiming
) -> None:
    namespace = release.namespace
    upgrade(
        kube,
        namespace,
        *release.values,
        "--set",
        "deletionCost.enabled=true",
        "--set",
        "workers[0].replicaCount=3",
    )
    pods = wait_workers(kube, namespace, 3)
    try:
        wait_until(
            lambda: set(costs(kube, namespace).values()) == {"0"}, timeout=90, what="idle pods to cost 0"
        )
    except AssertionError as exc:
        log = kube.run(
            ["kubectl", "-n", namespace, "logs", f"deployment/{FULLNAME}-deletion-cost", "--tail=30"]
        )
        raise AssertionError(f"{exc}: {costs(kube, namespace)}\n{log.stdout}{log.stderr}") from None
    users_before = release.web.user_count()
    # a job that outlasts the controller's 10 s reconcile period, so the cost is seen
    (job_id,) = release.web.submit(1, total=LONGER_THAN_DRAIN)
    busy = wait_until(
        lambda: [p for p, c in costs(kube, namespace).items() if c == "1"],
        timeout=60,
        what="the busy pod to cost 1",
    )
    assert len(busy) == 1, busy
    assert set(busy) <= pods, busy

    scale(kube, namespace, 1)

    def one_left() -> set[str] | None:
        left = set(worker_pods(kube, namespace))
        return left if len(left) == 1 else None

    kept = wait_until(one_left, timeout=30, what="two pods marked for deletion")
    assert kept == set(busy), f"the ReplicaSet must keep the busy pod {busy}, kept {kept}"
    gone = wait_gone(kube, namespace, pods - set(busy), timeout=60)
    record_timing("deletion-cost: scale-in 3 -> 1, idle pods gone", max(gone.values()))
    # the idle pods had nothing to drain: they exit at once, well within the grace period
    assert max(gone.values()) < DRAIN_WINDOW, gone
    job = release.web.wait_finished([job_id], timeout=90)[job_id]
    assert job["attempts"] == 1, job  # never interrupted
    assert_exactly_once({job_id: job}, users_before, release.web.user_count())


class BeatSends:
    """Every send of one task, by host, as the publishers themselves count them on the release's
    broker (celery_fleet.task_metrics: one ``sent`` counter per publishing host, written in the
    publish's own round trip; task events are off).  Polled every 0.2 s; beat's host is its pod."""

    def __init__(self, broker_url: str, task: str) -> None:
        import redis

        self.client: Any = redis.Redis.from_url(broker_url, socket_timeout=5, decode_responses=True)
        self.prefix = SEP.join(("c", "sent", task, ""))
        self.sent: list[tuple[float, str]] = []  # (when first seen, sender host)
        self._seen: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def totals(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for source in self.client.zrange(SOURCES_KEY, 0, -1):
            if source.startswith(HOST_SOURCE):
                fields = self.client.hgetall(source_key(source))
                sent = [int(value) for field, value in fields.items() if field.startswith(self.prefix)]
                counts[source.removeprefix(HOST_SOURCE)] = sum(sent)
        return counts

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                now = time.time()
                for host, count in self.totals().items():
                    # a jump of 2 in one poll is two sends 0 s apart: the gap check catches it
                    self.sent += [(now, host)] * (count - self._seen.get(host, 0))
                    self._seen[host] = count
            except Exception as exc:  # reported by the test
                self.error = exc
                return

    def __enter__(self) -> BeatSends:
        self._seen = self.totals()  # what was sent before the test is not the test's
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_helm_upgrade_mid_burst_rolls_every_deployment_and_one_beat_sends(
    kube: Kube, release: Release, record_timing: RecordTiming
) -> None:
    namespace = release.namespace
    scale(kube, namespace, 3)
    wait_workers(kube, namespace, 3)
    before = {
        d["metadata"]["name"]: d["metadata"]["generation"] for d in kube.items("-n", namespace, "deployments")
    }
    old_pods = deployment_pods(kube, namespace)
    users_before = release.web.user_count()
    with BeatSends(release.broker_url(kube), "jobs.tasks.cleanup_exports") as sends:
        ids = release.web.submit(6, total=LONG_JOB)
        wait_until(lambda: len(busy_workers(kube, namespace)) == 3, timeout=60, what="every worker busy")
        began = time.monotonic()
        extra_env = json.dumps([*drain_values()["django"]["extraEnv"], {"name": "E2E_ROLLOUT", "value": "1"}])
        upgrade(
            kube, namespace, "--reuse-values", "--set-json", f"django.extraEnv={extra_env}", timeout="420s"
        )
        after = {
            d["metadata"]["name"]: d["metadata"]["generation"]
            for d in kube.items("-n", namespace, "deployments")
        }
        assert after.keys() == before.keys()
        assert all(after[n] == before[n] + 1 for n in before), (before, after)
        for name in after:
            kube.kubectl(
                "-n", namespace, "rollout", "status", f"deployment/{name}", "--timeout=300s", timeout=320
            )
        record_timing("drain: helm upgrade mid-burst, every Deployment rolled", time.monotonic() - began)
        # the old pods drain (busy workers finish or hand back their task) and go
        rolled = time.monotonic()
        wait_until(
            lambda: not old_pods & deployment_pods(kube, namespace),
            timeout=GRACE + STOP_SLACK + 30,
            interval=0.5,
            what="the old pods to be gone",
        )
        record_timing("drain: rollout complete -> every old pod gone", time.monotonic() - rolled)
        jobs = release.web.wait_finished(ids, timeout=240)
        # beat sends every 2 s: wait for a few sends of the new beat
        time.sleep(3 * BEAT_EVERY)  # observation window, not synchronisation: the sends are recorded
    assert sends.error is None, sends.error
    counts = assert_exactly_once(release.web.jobs(jobs), users_before, release.web.user_count())
    print("rollout:", counts)

    beat = sorted(sends.sent)
    senders = [host for _, host in beat]
    runs = [h for i, h in enumerate(senders) if i == 0 or senders[i - 1] != h]
    assert len(runs) == 2, f"beat senders in order: {runs} (one old beat, then one new, never both)"
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(beat)]
    assert min(gaps) >= BEAT_EVERY / 2, f"a periodic task was sent twice: gaps {gaps}"
    handover = max(gaps)
    record_timing("drain: beat hand-over gap across the rollout", handover)
    print(f"beat: {len(beat)} sends by {runs}; hand-over gap {handover:.1f}s")


def evict(kube: Kube, namespace: str, pod: str) -> tuple[int, str]:
    body = json.dumps(
        {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": namespace}}
    )
    done = kube.run(
        ["kubectl", "create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction", "-f", "-"],
        input=body,
        check=False,
    )
    return done.returncode, done.stderr


def test_evictions_respect_the_pod_disruption_budgets(
    kube: Kube, release: Release, record_timing: RecordTiming
) -> None:
    namespace = release.namespace
    scale(kube, namespace, 3)
    pods = wait_workers(kube, namespace, 3)
    users_before = release.web.user_count()
    ids = release.web.submit(3, total=LONGER_THAN_DRAIN)
    wait_until(lambda: busy_workers(kube, namespace) == pods, timeout=60, what="every worker busy")
    # worker PDB: maxUnavailable 1. The first eviction goes through, a second at once is refused.
    first, second, _ = sorted(pods)
    code, err = evict(kube, namespace, first)
    assert code == 0, err
    code, err = evict(kube, namespace, second)
    assert code != 0, "a second eviction at once must be refused"
    assert "disruption budget" in err, err
    gone = wait_gone(kube, namespace, {first}, timeout=GRACE + STOP_SLACK + 30)
    record_timing("drain: evicted worker (task longer than the drain window) -> gone", gone[first])
    assert gone[first] <= GRACE + STOP_SLACK, gone
    # web PDB: minAvailable 1 of 2
    web = sorted(kube.ready_pods(namespace, "app.kubernetes.io/component=web"))
    assert len(web) == 2, web
    assert evict(kube, namespace, web[0])[0] == 0
    code, err = evict(kube, namespace, web[1])
    assert code != 0, "a second eviction at once must be refused"
    assert "disruption budget" in err, err

    jobs = release.web.jobs(release.web.wait_finished(ids, timeout=240))
    assert_exactly_once(jobs, users_before, release.web.user_count())
    # The evicted pod's job outlasted its drain window: handed back, run again by another pod,
    # which skipped the users the first run had made. The others ran once.
    handed_back = [j for j in jobs.values() if j["attempts"] > 1]
    assert len(handed_back) == 1, [(j["attempts"], j["result"]) for j in jobs.values()]
    assert handed_back[0]["attempts"] == 2, handed_back
    assert handed_back[0]["result"]["already_present"] > 0, handed_back


def test_kubectl_scale_sticks_with_autoscaling_off(
    kube: Kube, release: Release, record_timing: RecordTiming
) -> None:
    namespace = release.namespace
    assert kube.items("-n", namespace, "hpa") == []  # nothing else owns the replica count
    values = json.loads(kube.helm("get", "values", RELEASE, "-n", namespace, "--all", "-o", "json").stdout)
    configured = int(values["workers"][0]["replicaCount"])
    scale(kube, namespace, configured)
    wait_workers(kube, namespace, configured)
    began = time.monotonic()
    scale(kube, namespace, 4)
    wait_workers(kube, namespace, 4)
    record_timing(f"manual: kubectl scale {configured} -> 4 pods ready", time.monotonic() - began)
    with ReplicaTimeline(kube, namespace, [DEFAULT]) as timeline:
        time.sleep(3 * HPA_SYNC)  # observation period, not synchronisation: the timeline records it
    assert set(timeline.values(DEFAULT)) == {4}, timeline.describe(DEFAULT)
    # The next `helm upgrade` sets replicaCount again (three-way merge).
    upgrade(kube, namespace, "--reuse-values")
    assert kube.replicas(namespace, DEFAULT) == configured
    wait_workers(kube, namespace, configured)
