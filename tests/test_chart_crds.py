"""The chart's optional custom resources (KEDA ScaledObject, Prometheus Operator ServiceMonitor and
PrometheusRule) against the openAPIV3Schema of the real CRDs (tests/data/crds/, see its README),
with unknown fields refused as `kubectl apply --validate=strict` would."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support import helm as h

CRDS = Path(__file__).resolve().parent / "data" / "crds"
CI_VALUES = sorted((h.CHART / "ci").glob("*.yaml"))


def strict(schema: Any) -> Any:
    """additionalProperties: false wherever the CRD lists properties and does not keep unknown fields."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
            and set(schema["properties"]) != {"apiVersion", "kind", "metadata", "spec", "status"}
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@functools.cache
def validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    found = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            api_version = f"{crd['spec']['group']}/{version['name']}"
            found[(api_version, crd["spec"]["names"]["kind"])] = jsonschema.Draft7Validator(schema)
    return found


def errors(doc: dict[str, Any]) -> list[str]:
    validator = validators()[(doc["apiVersion"], doc["kind"])]
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_custom_resources_match_their_crds(values: Path) -> None:
    custom = [
        d for d in h.render([values]) if d["kind"] in {"ScaledObject", "ServiceMonitor", "PrometheusRule"}
    ]
    for doc in custom:
        assert errors(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"


def test_every_custom_kind_is_rendered_somewhere() -> None:
    kinds = {d["kind"] for values in CI_VALUES for d in h.render([values])}
    assert {"ScaledObject", "ServiceMonitor", "PrometheusRule"} <= kinds


def test_crd_validation_refuses_unknown_fields() -> None:
    docs = h.render([h.CHART / "ci" / "keda-values.yaml"])
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    broken = copy.deepcopy(scaled)
    broken["spec"]["coolDownPeriod"] = 30
    assert any("coolDownPeriod" in e for e in errors(broken))
    broken = copy.deepcopy(scaled)
    broken["spec"]["minReplicaCount"] = "zero"
    assert errors(broken)
