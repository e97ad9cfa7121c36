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
from collections.abc import Iterator
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
#: Queries of celery-exporter's published dashboards and alerts (celery-mixin, MIT licence,
#: github.com/danihodovic/celery-exporter), label sets unchanged; ``$job`` is our job.
SEL = 'job="$job", queue_name=~"$queue_name"'
CELERY_MIXIN_QUERIES = [
    'count(celery_worker_up{job="$job"} == 1)',
    'sum(celery_worker_tasks_active{job="$job"})',
    f"sum(round(increase(celery_task_received_total{{{SEL}}}[5m])))",
    f"sum(round(increase(celery_task_succeeded_total{{{SEL}}}[5m])))"
    f" / (sum(round(increase(celery_task_succeeded_total{{{SEL}}}[5m])))"
    f" + sum(round(increase(celery_task_failed_total{{{SEL}}}[5m]))))",
    f"round(sum(increase(celery_task_failed_total{{{SEL}}}[5m]) > 0) by (job, name))",
    f"round(sum(increase(celery_task_failed_total{{{SEL}}}[5m])) by (job, exception) > 0)",
    f"sum(rate(celery_task_runtime_sum{{{SEL}}}[5m])) by (name)"
    f" / sum(rate(celery_task_runtime_count{{{SEL}}}[5m])) by (name) > 0",
    f"sum(celery_queue_length{{{SEL}}}) by (job, queue_name)",
    f"histogram_quantile(0.50, sum(irate(celery_task_runtime_bucket{{{SEL}}}[5m]) >= 0) by (job, le))",
    'celery_task_received_total{job="$job", name!~"None"}',
    'sum(increase(celery_task_failed_total{job=~".*celery.*", queue_name!~"None", name!~"None"}[10m]))'
    " by (job, namespace, queue_name, name)",
    'sum(celery_queue_length{job=~".*celery.*", queue_name!~"None"}) by (job, namespace, queue_name)',
    'celery_worker_up{job=~".*celery.*"}',
]


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

    # celery-exporter's published dashboards and alerts work against our series.
    empty = [
        q
        for q in CELERY_MIXIN_QUERIES
        if not prometheus.query(substitute(q, {**TEMPLATE_VALUES, "$job": JOB}))
    ]
    assert not empty, "celery-mixin queries without data:\n" + "\n".join(empty)
