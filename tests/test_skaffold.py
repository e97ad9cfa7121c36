"""skaffold.yaml against skaffold's own JSON schema for its apiVersion (skaffold/v4beta13, from the
skaffold Go module github.com/GoogleContainerTools/skaffold/v2@v2.16.1, copied to tests/data/)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.support import helm as h

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_VERSION = "v4beta13"
SCHEMA = ROOT / "tests" / "data" / f"skaffold-{SCHEMA_VERSION}.json"


@pytest.fixture(scope="module")
def config() -> dict:
    return dict(yaml.safe_load((ROOT / "skaffold.yaml").read_text()))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_skaffold_yaml_matches_the_schema_of_its_api_version(
    config: dict, validator: jsonschema.Draft7Validator
) -> None:
    assert config["apiVersion"] == f"skaffold/{SCHEMA_VERSION}"
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.path))
    assert errors == [], "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_rejects_what_skaffold_rejects(
    config: dict, validator: jsonschema.Draft7Validator
) -> None:
    broken = json.loads(json.dumps(config))
    broken["deploy"]["helm"]["releases"][0]["chartDir"] = "helm/celery-fleet"  # misspelt key
    assert list(validator.iter_errors(broken))


def test_build_and_deploy_are_wired_together(config: dict) -> None:
    (artifact,) = config["build"]["artifacts"]
    assert (ROOT / artifact["docker"]["dockerfile"]).exists()
    assert config["build"]["local"]["push"] is False
    (release,) = config["deploy"]["helm"]["releases"]
    assert (ROOT / release["chartPath"] / "Chart.yaml").exists()
    key = re.sub(r"[^A-Za-z0-9]", "_", artifact["image"])
    templates = release["setValueTemplates"]
    assert templates["image.repository"] == f"{{{{.IMAGE_REPO_{key}}}}}"
    assert templates["image.tag"] == f"{{{{.IMAGE_TAG_{key}}}}}"
    profiles = {p["name"]: p for p in config["profiles"]}
    assert set(profiles) == {"kind", "minikube"}
    for name, profile in profiles.items():
        (patch,) = profile["patches"]
        for values in patch["value"]:
            assert (ROOT / values).exists(), f"profile {name}: {values} missing"


@pytest.mark.parametrize("profile", ["kind", "minikube"])
def test_profiles_render_with_the_chart(config: dict, profile: str) -> None:
    (patch,) = next(p for p in config["profiles"] if p["name"] == profile)["patches"]
    sets = {"image.repository": "registry.local/celery-fleet", "image.tag": "abc1234"}
    docs = h.render([ROOT / v for v in patch["value"]], sets)
    web = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-web"))
    assert web["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/celery-fleet:abc1234"
