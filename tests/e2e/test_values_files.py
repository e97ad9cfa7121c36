"""Every values file in helm/celery-fleet/ci/ against the real API server, without running
its pods (the release test runs the default values for real): `helm install --dry-run=server`
sends every rendered object through kube-apiserver's schema validation (strict fields) and
admission, and the chart's ``lookup`` calls see a live cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.chart import CI_VALUES, RELEASE, is_hook
from tests.e2e.kube import CHART, Kube, rendered


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_every_object_passes_the_api_server(
    kube: Kube, namespace: str, crds: list[str], values: Path
) -> None:
    helm_args = ["-f", str(values)]
    objects = [m for m in rendered(kube, RELEASE, namespace, helm_args) if not is_hook(m)]
    assert objects, "the chart rendered nothing"
    done = kube.helm(
        "install", RELEASE, str(CHART), "-n", namespace, *helm_args, "--dry-run=server", check=False
    )
    assert done.returncode == 0, done.stderr
