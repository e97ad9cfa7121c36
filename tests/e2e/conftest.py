"""End-to-end suite against the kwok cluster of tests/cluster (run by `make e2e`).

Collected only with ``CELERY_FLEET_E2E=1``: plain ``pytest`` (``make test``) skips this folder,
since it needs the cluster that ``make e2e`` builds and starts. Every test here is marked
``e2e``. The cluster is found through ``KUBECONFIG`` (``eval "$(tests/cluster/cluster.sh env)"``)
or, failing that, ``tests/cluster/cluster.sh env``.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_fleet.local.redis_server import RedisServer
from tests.e2e.host import Exporter, LabelledPrometheus
from tests.e2e.kube import Kube, cluster_env

E2E_ENABLED = os.environ.get("CELERY_FLEET_E2E") == "1"
HERE = Path(__file__).parent

if not E2E_ENABLED:
    # Not even imported: `make test` has no cluster.
    collect_ignore_glob = ["test_*.py"]

_TIMINGS: list[tuple[str, float]] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: needs the kwok cluster of tests/cluster (`make e2e`)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _TIMINGS:
        terminalreporter.section("e2e timings")
        for what, seconds in _TIMINGS:
            terminalreporter.write_line(f"{seconds:8.1f}s  {what}")


@pytest.fixture(scope="session")
def record_timing() -> object:
    """``record_timing(what, seconds)``: printed in the summary (and kept in the JUnit-less log)."""

    def record(what: str, seconds: float) -> None:
        _TIMINGS.append((what, seconds))
        print(f"e2e timing: {what}: {seconds:.1f}s")

    return record


@pytest.fixture(scope="session")
def kube() -> Kube:
    k = Kube(cluster_env())
    done = k.run(["kubectl", "get", "--raw", "/readyz"], check=False, timeout=20)
    if done.returncode != 0:
        pytest.fail(
            "no e2e cluster answers at KUBECONFIG="
            f"{k.env.get('KUBECONFIG')}: run `make e2e` (or `make cluster-up`)\n{done.stderr}"
        )
    return k


def _namespace_name(node_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", node_name.lower()).strip("-")[:40].strip("-")
    return f"e2e-{base}-{uuid.uuid4().hex[:5]}"


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace; at teardown every release in it is uninstalled and it is deleted."""
    name = _namespace_name(request.node.name)
    kube.kubectl("create", "namespace", name)
    yield name
    releases = kube.helm("list", "-n", name, "-q", "-a", check=False).stdout.split()
    for release in releases:
        kube.helm("uninstall", release, "-n", name, "--wait", "--timeout", "60s", check=False)
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)
    kube.kubectl("delete", "pv", "-l", f"celery-fleet-e2e/namespace={name}", "--wait=false", check=False)


@pytest.fixture
def exporter(redis_server: RedisServer, redis_client: object, tmp_path: Path) -> Iterator[Exporter]:
    """The real ``celery-fleet exporter`` on the host, watching the (flushed) test broker."""
    running = Exporter(broker_url=redis_server.url, log=tmp_path / "exporter.log").start()
    yield running
    running.stop()


@pytest.fixture
def prometheus_for(exporter: Exporter, tmp_path: Path) -> Iterator[object]:
    """``prometheus_for(namespace)``: a real Prometheus scraping the exporter every second, its
    series labelled with the release namespace (what a ServiceMonitor in that namespace adds)."""
    started: list[LabelledPrometheus] = []

    def start(namespace: str) -> LabelledPrometheus:
        server = LabelledPrometheus(
            data_dir=tmp_path / "prometheus",
            targets={"celery-fleet-exporter": exporter.target},
            labels={"namespace": namespace},
        )
        started.append(server)
        server.start()
        from celery_fleet.local.waiting import wait_until

        wait_until(server.targets_up, timeout=30, what="Prometheus to scrape the exporter")
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def deadline_clock() -> object:
    return time.monotonic


@pytest.fixture(scope="session")
def crds(kube: Kube) -> list[str]:
    """KEDA's CRDs and prometheus-operator's ServiceMonitor/PrometheusRule, from their Go modules
    (tests/cluster/build-autoscalers.sh crds), applied server-side and Established."""
    import subprocess

    from tests.e2e.kube import REPO

    files = subprocess.run(
        [str(REPO / "tests" / "cluster" / "build-autoscalers.sh"), "crds"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.split()
    names = []
    for path in files:
        out = kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", path, "-o", "name")
        names += out.split()
    kube.kubectl("wait", "--for=condition=Established", *names, "--timeout=60s")
    return names
