"""The library stands alone: it never imports or names the example, and its wheel ships nothing else."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.fleet import REPO

LIBRARY = REPO / "src" / "celery_fleet"
EXAMPLE_PACKAGES = {p.name for p in (REPO / "example").iterdir() if (p / "__init__.py").exists()}


def test_the_example_has_the_packages_this_test_guards_against() -> None:
    assert {"fleetsite", "jobs"} <= EXAMPLE_PACKAGES


def test_no_library_module_imports_or_names_the_example() -> None:
    offenders = []
    for path in sorted(LIBRARY.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [w for w in EXAMPLE_PACKAGES if w == "fleetsite" and w in node.value]
            else:
                continue
            for name in names:
                if name.split(".")[0] in EXAMPLE_PACKAGES:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    assert not offenders, "the library reaches into the example:\n" + "\n".join(offenders)


def test_every_library_module_imports_without_the_example_on_the_path() -> None:
    code = (
        "import importlib, pkgutil, celery_fleet\n"
        "mods = [m.name for m in pkgutil.walk_packages(celery_fleet.__path__, 'celery_fleet.')]\n"
        "for m in mods: importlib.import_module(m)\n"
        "import sys; bad = sorted(n for n in sys.modules if n.split('.')[0] in ('fleetsite', 'jobs'))\n"
        "assert not bad, bad\n"
        "print(len(mods))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.strip()) >= 30


def test_the_wheel_ships_the_library_only(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("celery_fleet-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
        names = archive.namelist()
    assert {t for t in top if not t.endswith(".dist-info")} == {"celery_fleet"}, top
    assert "celery_fleet/django/urls.py" in names
    assert "celery_fleet/py.typed" in names
