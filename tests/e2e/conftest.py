"""End-to-end suite against the one-node cluster of tests/cluster (run by `make e2e`).

Collected only with ``CELERY_FLEET_E2E=1``: plain ``pytest`` (``make test``) skips this folder,
since it needs the cluster that ``make e2e`` builds and starts. Every test here is marked
``e2e``. The cluster is found through ``KUBECONFIG`` (``eval "$(tests/cluster/cluster.sh env)"``)
or, failing that, ``tests/cluster/cluster.sh env``.

``CELERY_FLEET_E2E_KEEP=1`` (``make e2e KEEP_CLUSTER=1``): the namespace of the last release
stays, so the cluster can be looked at afterwards; earlier ones are deleted as usual.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.host import apply_files, autoscalers
from tests.e2e.kube import Kube, cluster_env

E2E_ENABLED = os.environ.get("CELERY_FLEET_E2E") == "1"
KEEP_LAST = os.environ.get("CELERY_FLEET_E2E_KEEP") == "1"
HERE = Path(__file__).parent

if not E2E_ENABLED:
    # Not even imported: `make test` has no cluster.
    collect_ignore_glob = ["test_*.py"]

_TIMINGS: list[tuple[str, float]] = []
_KEPT: list[str] = []

RecordTiming = Callable[[str, float], None]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: needs the cluster of tests/cluster (`make e2e`)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _TIMINGS:
        terminalreporter.section("e2e timings")
        for what, seconds in _TIMINGS:
            terminalreporter.write_line(f"{seconds:8.1f}s  {what}")
    if _KEPT:
        terminalreporter.write_line(f"kept for inspection: namespace {_KEPT[-1]}")


@pytest.fixture(scope="session")
def record_timing() -> RecordTiming:
    """``record_timing(what, seconds)``: printed at once and again in the summary."""

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


def delete_namespace(kube: Kube, name: str) -> None:
    """Uninstall every release in it and delete it, without waiting: its pods stop while the
    next test starts (idle pods exit at once on SIGTERM)."""
    releases = kube.helm("list", "-n", name, "-q", "-a", check=False).stdout.split()
    for release in releases:
        kube.helm("uninstall", release, "-n", name, "--wait=false", check=False, timeout=120)
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)
    kube.kubectl("delete", "pv", "-l", f"celery-fleet-e2e/namespace={name}", "--wait=false", check=False)


def _release_namespace(kube: Kube, name: str) -> Iterator[str]:
    kube.kubectl("create", "namespace", name)
    yield name
    if KEEP_LAST:
        for older in _KEPT:
            delete_namespace(kube, older)
        _KEPT[:] = [name]
    else:
        delete_namespace(kube, name)


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test; at teardown its releases are uninstalled and it is deleted."""
    yield from _release_namespace(kube, _namespace_name(request.node.name))


@pytest.fixture(scope="module")
def module_namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace shared by the tests of one module (one release they all look at)."""
    yield from _release_namespace(kube, _namespace_name(request.module.__name__.rsplit(".", 1)[-1]))


@pytest.fixture(scope="session")
def crds(kube: Kube) -> list[str]:
    """KEDA's CRDs and prometheus-operator's ServiceMonitor/PrometheusRule, from their Go modules
    (tests/cluster/build-autoscalers.sh crds), applied server-side and Established."""
    files = autoscalers("crds")
    apply_files(kube, files)
    names = kube.kubectl("get", "crd", "-o", "name").split()
    wanted = [n for n in names if n.endswith((".keda.sh", ".monitoring.coreos.com"))]
    kube.kubectl("wait", "--for=condition=Established", *wanted, "--timeout=60s")
    return wanted


@pytest.fixture
def deadline_clock() -> Callable[[], float]:
    return time.monotonic
