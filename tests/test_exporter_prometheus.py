"""A real Prometheus scrapes the exporter while real workers run real tasks.

Every expression of the Grafana dashboard and of the alert rules is evaluated through
Prometheus's HTTP API and must return data; backlog and oldest-age values must match
what was enqueued.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from celery import Celery
from celery.signals import before_task_publish

from celery_fleet.lifecycle import stamp_published_at
from celery_fleet.local.processes import ManagedProcess, file_sink
from celery_fleet.local.redis_server import RedisServer
from celery_fleet.local.waiting import free_port, wait_until
from tests.support.fleet import Fleet
from tests.support.grafana import Dashboard, Panel
from tests.support.grafana import substitute as grafana_substitute
from tests.support.ledger import enqueue_timed_work, read_runs, send_tasks
from tests.support.prometheus import PrometheusServer, binary, comparisons_as_bool

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "helm/celery-fleet/files/dashboards/celery-fleet.json"
RULES = REPO / "helm/celery-fleet/files/prometheus-rules.yaml"
JOB = "celery-fleet-exporter"  # like the chart's Service: matches celery-exporter's job=~".*celery.*"
TEMPLATE_VALUES = {
    "${datasource}": "",
    "$__rate_interval": "1m",
    "$__range": "5m",
    "$__interval": "15s",
    "$queue_name": ".*",
    "$namespace": ".*",
    "$job": ".*celery.*",
}


def substitute(expr: str, values: dict[str, str] = TEMPLATE_VALUES) -> str:
    for name, value in values.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown template variable in {expr}"
    return expr


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"{panel['title']} [{target.get('refId', '')}]", target["expr"]))
    return found


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(
        [binary("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_dashboard_covers_the_fleet() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "celery-fleet"
    exprs = " ".join(expr for _, expr in dashboard_exprs())
    for metric in (
        "celery_fleet_queue_backlog",
        "celery_fleet_queue_oldest_age_seconds",
        "celery_task_succeeded_total",
        "celery_task_failed_total",
        "celery_task_runtime_bucket",
        "celery_task_queue_wait_time_bucket",
        "celery_fleet_broker_up",
        "celery_active_worker_count",
        "celery_fleet_busy_process_count",
        "kube_deployment_status_replicas",
    ):
        assert metric in exprs, f"no panel shows {metric}"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    alerts = {rule["alert"] for rule in alert_rules()}
    assert {
        "CeleryFleetQueueLatencyHigh",
        "CeleryFleetBacklogGrowingAtMaxWorkers",
        "CeleryFleetTaskFailureRatioHigh",
        "CeleryFleetQueueHasNoWorkers",
        "CeleryFleetExporterDown",
    } <= alerts


@pytest.fixture
def publisher(redis_server: RedisServer) -> Iterator[Celery]:
    """A publisher with celery-fleet's real publish hook (stamps x-fleet-published-at)."""
    app = Celery("prometheus-test", broker=redis_server.url, set_as_current=False)
    app.conf.update(
        broker_transport_options={"priority_steps": list(range(10)), "queue_order_strategy": "priority"},
        task_serializer="json",
        task_send_sent_event=True,
    )
    before_task_publish.connect(stamp_published_at, weak=False)
    yield app
    app.close()


@pytest.fixture
def exporter(fleet: Fleet, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = ManagedProcess(
        "exporter",
        [sys.executable, "-m", "celery_fleet.cli", "exporter", "--port", str(port), "--host", "127.0.0.1"],
        env={**fleet.env, "CELERY_FLEET_QUEUES": "default,exports,periodic"},
        sink=file_sink(fleet.log_path),
    ).start()
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.returncode() is not None:
            raise RuntimeError(f"exporter exited with {process.returncode()}")
        return bool(httpx.get(f"{url}/healthz", timeout=2).json()["events_connected"])

    wait_until(healthy, timeout=60, what="the exporter to listen to events")
    yield f"127.0.0.1:{port}"
    process.stop(timeout=20)


@pytest.fixture
def prometheus(exporter: str, tmp_path: Path) -> Iterator[PrometheusServer]:
    server = PrometheusServer(data_dir=tmp_path / "prometheus", targets={JOB: exporter}, rule_files=[RULES])
    server.start()
    wait_until(server.targets_up, timeout=60, what="prometheus to scrape the exporter")
    yield server
    server.stop()


def eventually(prometheus: PrometheusServer, expr: str, expected: float, *, timeout: float = 90) -> None:
    wait_until(
        lambda: prometheus.value(expr) == expected,
        timeout=timeout,
        interval=0.5,
        what=f"{expr} == {expected} (last: {prometheus.query(expr)})",
    )


@pytest.mark.slow
def test_prometheus_sees_the_truth(fleet: Fleet, publisher: Celery, prometheus: PrometheusServer) -> None:
    # Three messages on a queue no worker consumes: scale-from-zero needs them reported.
    before = time.time()
    for i in range(3):
        publisher.send_task("jobs.tasks.noop", queue="periodic", priority=(0, 5, 9)[i])
    after_first = before + (time.time() - before)  # the first stamp is no later than this
    eventually(prometheus, 'celery_queue_length{queue_name="periodic"}', 3)
    eventually(prometheus, 'celery_fleet_queue_backlog{queue_name="periodic"}', 3)
    # The age in one sample, minus that sample's own time, is minus the oldest stamp.
    oldest = 'celery_fleet_queue_oldest_age_seconds{queue_name="periodic"}'
    minus_stamp = prometheus.value(f"{oldest} - timestamp({oldest})")
    assert minus_stamp is not None
    assert before - 1.5 <= -minus_stamp <= after_first + 1.5, (before, -minus_stamp, after_first)
    eventually(prometheus, 'ALERTS{alertname="CeleryFleetQueueHasNoWorkers", queue_name="periodic"}', 1)

    fleet.start_worker(["default", "exports"], concurrency=2, name="metrics")
    eventually(prometheus, 'celery_active_worker_count{queue_name="default"}', 1)
    eventually(prometheus, 'celery_active_process_count{queue_name="exports"}', 2)
    eventually(prometheus, 'celery_active_worker_count{queue_name="periodic"}', 0)

    # A counter's first sample is its baseline for increase()/rate(): let Prometheus see each
    # series once before it grows, as it would in a fleet that runs for longer than a test.
    runtimes = 'celery_task_runtime_count{queue_name="default", name="jobs.tasks.timed_work"}'
    failures = 'sum(celery_task_failed_total{queue_name="default", exception="TypeError"})'
    publisher.send_task("jobs.tasks.timed_work", args=["quick-0", 0.2], queue="default")
    publisher.send_task("jobs.tasks.timed_work", args=["broken-0", "not-a-number"], queue="default")
    eventually(prometheus, runtimes, 1)
    eventually(prometheus, failures, 1)
    for i in range(1, 6):
        publisher.send_task("jobs.tasks.timed_work", args=[f"quick-{i}", 0.2], queue="default")
    publisher.send_task("jobs.tasks.timed_work", args=["broken-1", "not-a-number"], queue="default")
    eventually(prometheus, 'sum(celery_task_succeeded_total{queue_name="default"})', 6)
    eventually(prometheus, runtimes, 6)
    eventually(prometheus, failures, 2)

    # Two long tasks: while they run the queue's list is empty but its backlog is not.
    for i in range(2):
        publisher.send_task("jobs.tasks.timed_work", args=[f"long-{i}", 20], queue="exports")
    held_and_none_waiting = (
        'celery_fleet_queue_held{queue_name="exports"} == 2'
        ' and on() celery_queue_length{queue_name="exports"} == 0'
    )
    eventually(prometheus, held_and_none_waiting, 2)
    eventually(prometheus, 'celery_fleet_queue_backlog{queue_name="exports"}', 2)
    eventually(prometheus, 'celery_fleet_busy_process_count{queue_name="exports"}', 2)

    # Every dashboard expression returns data (the replicas panel needs kube-state-metrics).
    empty = []
    for title, expr in dashboard_exprs():
        if not prometheus.query(substitute(expr)) and "kube_" not in expr:
            empty.append(f"{title}: {expr}")
    assert not empty, "dashboard panels without data:\n" + "\n".join(empty)

    # Every alert expression looks at live series (comparisons evaluated with `bool`).
    for rule in alert_rules():
        result = prometheus.query(comparisons_as_bool(rule["expr"]))
        assert result, f"{rule['alert']}: no series behind\n{rule['expr']}"
    # ... and the one provoked for real fires on the right queue, and only there.
    no_workers = next(r for r in alert_rules() if r["alert"] == "CeleryFleetQueueHasNoWorkers")
    firing = {series["metric"]["queue_name"] for series in prometheus.query(no_workers["expr"])}
    assert firing == {"periodic"}


# --- celery-exporter's own dashboards and alerts, as published, on fleets of several sizes ---

MIXIN = REPO / "tests/data/celery-mixin"
MIXIN_JOB = "celery-exporter"  # matches every dashboard's job selector, the legacy one's included
TARGET_LABELS = {"cluster": "ci", "namespace": "fleet"}  # what service discovery adds in a cluster
#: Grafana's built-ins for the dashboards' time range (1 day) and 1 s scrapes.
BUILTINS = {"__range": "1d", "__interval": "30s", "__rate_interval": "31s"}


def mixin_rules() -> dict[str, str]:
    rules = yaml.safe_load((MIXIN / "prometheus_alerts.yaml").read_text(encoding="utf-8"))
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


@pytest.fixture
def mixin_prometheus(exporter: str, tmp_path: Path) -> Iterator[PrometheusServer]:
    server = PrometheusServer(
        data_dir=tmp_path / "prometheus-mixin",
        targets={MIXIN_JOB: exporter},
        rule_files=[MIXIN / "prometheus_alerts.yaml"],
        target_labels=TARGET_LABELS,
    )
    server.start()
    wait_until(server.targets_up, timeout=60, what="prometheus to scrape the exporter")
    yield server
    server.stop()


class Panels:
    """One dashboard's panels, variables resolved against the live data as Grafana would."""

    def __init__(self, prometheus: PrometheusServer, name: str) -> None:
        self.prometheus = prometheus
        self.dashboard = Dashboard(MIXIN / f"{name}.json")

    def variables(self) -> dict[str, str]:
        return self.dashboard.resolve(self.prometheus, BUILTINS)

    def exprs(self, title: str) -> list[str]:
        values = {**BUILTINS, **self.variables()}
        return [grafana_substitute(p.expr, values) for p in self.dashboard.panel(title)]

    def value(self, title: str, index: int = 0) -> float | None:
        return self.prometheus.value(self.exprs(title)[index])

    def by(self, title: str, label: str, index: int = 0) -> dict[str, float]:
        result = self.prometheus.query(self.exprs(title)[index])
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}

    def empty(self) -> list[Panel]:
        values = {**BUILTINS, **self.variables()}
        return [
            p
            for p in self.dashboard.panels()
            if not self.prometheus.query(grafana_substitute(p.expr, values))
        ]


def hostnames_up(prometheus: PrometheusServer) -> dict[str, float]:
    return {
        r["metric"]["hostname"]: float(r["value"][1])
        for r in prometheus.query(f'celery_worker_up{{job="{MIXIN_JOB}"}}')
    }


def mixin_eventually(check: Callable[[], Any], what: str, timeout: float = 90) -> None:
    wait_until(lambda: bool(check()), timeout=timeout, interval=0.5, what=what)


def settle(prometheus: PrometheusServer, *, received: int, succeeded: int, failed: int) -> None:
    """Prometheus has every task event the workers counted."""
    sel = f'job="{MIXIN_JOB}"'
    for metric, expected in (("received", received), ("succeeded", succeeded), ("failed", failed)):
        eventually(prometheus, f"sum(celery_task_{metric}_total{{{sel}}})", expected, timeout=120)


TASK_STATS = ("success ratio", "succeeded", "failed", "sent", "received", "rejected", "retried", "revoked")


def numbers(overview: Panels, by_task: Panels) -> dict[str, float]:
    """The counts the dashboards show (their panels as they are)."""
    found = {name: overview.value("Task Stats", i) or 0.0 for i, name in enumerate(TASK_STATS)}
    found["received [1w]"] = overview.value("Tasks received by workers [1w]") or 0.0
    found["failed timed_work [1w]"] = overview.by("Top Failed Tasks [1w]", "name").get(
        "jobs.tasks.timed_work", 0
    )
    found["TypeError [1w]"] = overview.by("Top Task Exceptions [1w]", "exception").get("TypeError", 0.0)
    found["succeeded timed_work [1w]"] = by_task.value("Task Stats [1w]", 1) or 0.0
    return found


@pytest.mark.slow
def test_celery_exporter_dashboards_count_fleets_of_several_sizes(
    fleet: Fleet, mixin_prometheus: PrometheusServer
) -> None:
    prometheus = mixin_prometheus
    broker = fleet.env["CELERY_BROKER_URL"]
    overview = Panels(prometheus, "celery-tasks-overview")
    by_task = Panels(prometheus, "celery-tasks-by-task")
    legacy = Panels(prometheus, "celery-tasks")
    alerts = mixin_rules()
    db = fleet.data_dir / "db.sqlite3"
    quick_drain = {"CELERY_FLEET_DRAIN_WINDOW": "2"}
    workers = {"w1@test": fleet.start_worker(["default"], name="w1", extra_env=quick_drain)}
    send_tasks(broker, [("jobs.tasks.noop", (), None)], "periodic")  # a backlog no worker takes

    # A fleet of 1: the variables resolve as Grafana resolves them; the Workers panel counts it.
    mixin_eventually(lambda: overview.value("Workers") == 1, "Workers == 1")
    variables = overview.variables()
    assert (variables["cluster"], variables["namespace"], variables["job"]) == ("ci", "fleet", MIXIN_JOB)
    assert variables["queue_name"] == "()"  # from received tasks: none yet
    enqueue_timed_work(broker, [("first", 0.3)])
    sent = 1

    # ... of 3 (one machine: the series keep the workers' full node names, so none merge).
    for n in (2, 3):
        workers[f"w{n}@test"] = fleet.start_worker(["default"], name=f"w{n}", extra_env=quick_drain)
    mixin_eventually(lambda: overview.value("Workers") == 3, "Workers == 3")
    mixin_eventually(
        lambda: legacy.value("Celery Workers") == 3, "the legacy dashboard's Celery Workers == 3"
    )
    assert hostnames_up(prometheus) == dict.fromkeys(workers, 1.0)

    # Each worker's task series exist before the counted work: a counter's first sample is
    # increase()'s baseline, for celery-exporter's series as for ours.  Warm up until every
    # worker has run a task and failed one, and Prometheus saw the totals.

    def warmed() -> bool:
        nonlocal sent
        ran = prometheus.query(f'celery_task_succeeded_total{{job="{MIXIN_JOB}"}} > 0')
        failed = prometheus.query(f'celery_task_failed_total{{job="{MIXIN_JOB}", exception="TypeError"}} > 0')
        if (
            {r["metric"]["hostname"] for r in ran}
            >= set(workers)
            <= {r["metric"]["hostname"] for r in failed}
        ):
            return True
        n = time.monotonic_ns()
        warm: list[tuple[str, Any]] = [(f"warm-{n}-{i}", 0.3) for i in range(3)]
        warm += [(f"warm-bad-{n}-{i}", "not-a-number") for i in range(6)]
        enqueue_timed_work(broker, warm)
        sent += len(warm)
        return False

    wait_until(warmed, timeout=240, interval=3, what="every worker to have run and failed a task")
    settle(prometheus, received=sent, succeeded=sent // 3 + 1, failed=sent * 2 // 3)

    # increase() extrapolates a series by up to half a scrape interval past its first sample,
    # in proportion to its growth: with every series at least 40 s old that is under 1.3 %.
    def youngest_series_age() -> float:
        born = [
            prometheus.value(
                f'max(min_over_time(timestamp(celery_task_{m}_total{{job="{MIXIN_JOB}"}})[1h:1s]))'
            )
            for m in ("sent", "received", "succeeded", "failed")
        ]
        return time.time() - max(b or time.time() for b in born)

    wait_until(lambda: youngest_series_age() >= 40, timeout=90, what="every task series to be 40 s old")
    assert overview.variables()["queue_name"] == "(default)"
    with prometheus.at_last_scrape(MIXIN_JOB):
        before = numbers(overview, by_task)

    # The counted work: 10 successes, 4 failures, 2 long tasks that keep running, and 120
    # more on the queue no worker consumes.
    counted: list[tuple[str, Any]] = [(f"ok-{i}", 0.3) for i in range(10)]
    counted += [(f"bad-{i}", "not-a-number") for i in range(4)] + [("long-0", 60.0), ("long-1", 60.0)]
    enqueue_timed_work(broker, counted)
    send_tasks(broker, [("jobs.tasks.noop", (), None)] * 120, "periodic")

    def counted_work_ran() -> bool:
        runs = read_runs(db)
        done = all(runs.get(f"ok-{i}") and runs[f"ok-{i}"].completions for i in range(10))
        return done and all(key in runs for key in ("bad-0", "bad-1", "bad-2", "bad-3", "long-0", "long-1"))

    wait_until(counted_work_ran, timeout=120, what="the counted tasks to run")
    # (the two long tasks are running)
    settle(prometheus, received=sent + 16, succeeded=sent // 3 + 11, failed=sent * 2 // 3 + 4)
    mixin_eventually(lambda: overview.value("Workers Active Tasks") == 2, "Workers Active Tasks == 2")

    # The dashboards' numbers grew by the counted work (within the extrapolation above, which
    # is Prometheus's rule for celery-exporter's series as for ours: at most 1 after round()).
    with prometheus.at_last_scrape(MIXIN_JOB):
        after = numbers(overview, by_task)
    expected = {
        "succeeded": 10,
        "failed": 4,
        "sent": 16,  # to the queues of $queue_name: those with received tasks
        "received": 16,
        "rejected": 0,
        "retried": 0,
        "revoked": 0,
        "received [1w]": 16,
        "failed timed_work [1w]": 4,
        "TypeError [1w]": 4,
        "succeeded timed_work [1w]": 10,
    }
    grown = {name: after[name] - before[name] for name in expected}
    off = {name: (grown[name], want) for name, want in expected.items() if abs(grown[name] - want) > 1}
    debug = prometheus.query(f'celery_task_received_total{{job="{MIXIN_JOB}"}}[2m]')
    assert not off, (
        f"panels off by more than 1 (grown, expected): {off}\nbefore {before}\nafter {after}\n{debug}"
    )
    assert after["success ratio"] == pytest.approx(
        after["succeeded"] / (after["succeeded"] + after["failed"])
    )
    assert 0.25 <= (overview.value("Average Runtime for Tasks [1w]") or 0) < 1.0  # 0.3 s tasks
    assert overview.value("Queues") == 4  # the configured three, and the follow-ups the workers read
    lengths = overview.by("Queue Length by Queue", "queue_name")
    assert lengths == {"default": 0, "exports": 0, "periodic": 121, "followups": 0}
    # The per-task dashboard, its $task the first task received (its only one here).
    assert by_task.variables()["task"] == "jobs\\\\.tasks\\\\.timed_work"
    # Every panel of the three dashboards shows data, but those that show only counts above 0
    # of what did not happen here (rejected, retried, revoked).
    for panels in (overview, by_task, legacy):
        nothing_happened = ("_rejected_", "_retried_", "_revoked_")
        unexpected = [p for p in panels.empty() if not any(k in p.expr for k in nothing_happened)]
        assert not unexpected, f"{panels.dashboard.title}: panels without data: {unexpected}"

    # Their alerts look at the right series: the failing task, the long queue, no worker down.
    failing = prometheus.query(alerts["CeleryTaskHighFailRate"])
    assert [(r["metric"]["queue_name"], r["metric"]["name"]) for r in failing] == [
        ("default", "jobs.tasks.timed_work")
    ]
    long_queues = prometheus.query(alerts["CeleryHighQueueLength"])
    assert [(r["metric"]["queue_name"], float(r["value"][1])) for r in long_queues] == [("periodic", 121.0)]
    assert prometheus.query(alerts["CeleryWorkerDown"]) == []

    # Scale in to 2: the idle worker leaves; its series stays, at 0, and the alert sees it.
    idle = [
        r["metric"]["hostname"]
        for r in prometheus.query(f'celery_worker_tasks_active{{job="{MIXIN_JOB}"}} == 0')
    ]
    assert len(idle) == 1, idle
    workers[idle[0]].stop(timeout=30)
    mixin_eventually(lambda: overview.value("Workers") == 2, "Workers == 2")
    down = {r["metric"]["hostname"] for r in prometheus.query(alerts["CeleryWorkerDown"])}
    assert down == {idle[0]}
    assert overview.value("Workers Active Tasks") == 2

    # ... and to zero: no worker up, every one reported down, and the dashboard's variables
    # still resolve (0-valued series until the purge delay), so it shows the empty fleet.
    for process in workers.values():
        process.stop(timeout=30)
    mixin_eventually(lambda: overview.value("Workers") is None, "Workers == no data")
    mixin_eventually(
        lambda: (
            {r["metric"]["hostname"] for r in prometheus.query(alerts["CeleryWorkerDown"])} == set(workers)
        ),
        "every worker reported down",
    )
    assert overview.variables()["job"] == MIXIN_JOB
    assert hostnames_up(prometheus) == dict.fromkeys(workers, 0.0)
