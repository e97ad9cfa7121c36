"""docs/adopt.md, done by a test: a Django + Celery project celery-fleet has never seen, generated
here with ``django-admin startproject``, adopts the library and runs on ``celery-fleet up --app``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from celery_fleet.local.waiting import free_port, wait_until

PROJECT = "shop"
QUEUE = "orders"

CELERY_MODULE = """\
import os

from celery import Celery

from celery_fleet.lifecycle import install

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

app = Celery("shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
install(app)
"""

SETTINGS_TAIL = """
# --- celery-fleet (docs/adopt.md) ---
import os

from celery_fleet.presets import safe_delivery_settings
from celery_fleet.timings import Timings

INSTALLED_APPS += ["celery_fleet.django", "orders"]
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
globals().update(safe_delivery_settings(broker_url=CELERY_BROKER_URL, timings=Timings()))
CELERY_TASK_DEFAULT_QUEUE = "orders"
"""

TASKS_MODULE = """\
from pathlib import Path

from celery import shared_task


@shared_task
def ship(order_id: str, folder: str) -> str:
    Path(folder, order_id).write_text("shipped", encoding="ascii")
    return order_id
"""


def generate_project(root: Path) -> Path:
    """What a user has before celery-fleet: startproject + a Celery app + an app with a task."""
    root.mkdir(parents=True)
    for argv in (["startproject", PROJECT, "."], ["startapp", "orders"]):
        done = subprocess.run(
            [sys.executable, "-m", "django", *argv], cwd=root, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
    package = root / PROJECT
    (package / "celery.py").write_text(CELERY_MODULE, encoding="utf-8")
    (package / "__init__.py").write_text("from .celery import app as celery_app\n", encoding="utf-8")
    with (package / "settings.py").open("a", encoding="utf-8") as fh:
        fh.write(SETTINGS_TAIL)
    urls = (package / "urls.py").read_text(encoding="utf-8")
    urls = urls.replace("from django.urls import path", "from django.urls import include, path")
    urls = urls.replace(
        "urlpatterns = [", 'urlpatterns = [\n    path("", include("celery_fleet.django.urls")),'
    )
    (package / "urls.py").write_text(urls, encoding="utf-8")
    (root / "orders" / "tasks.py").write_text(TASKS_MODULE, encoding="utf-8")
    return root


def project_env() -> dict[str, str]:
    """The user's shell: nothing of this repository's example or settings."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CELERY_", "DJANGO_", "DATABASE_", "SECRET_KEY")) and k != "PYTHONPATH"
    }


def test_the_queues_command_reads_what_the_project_declares(tmp_path: Path) -> None:
    root = generate_project(tmp_path / "shop")
    done = subprocess.run(
        [sys.executable, "-m", "celery_fleet.cli", "queues", "--app", PROJECT],
        cwd=root, env=project_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [QUEUE]
    bad = subprocess.run(
        [sys.executable, "-m", "celery_fleet.cli", "queues", "--app", "nosuchproject"],
        cwd=root, env=project_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "cannot load the Celery app 'nosuchproject'" in bad.stderr


@pytest.mark.slow
def test_a_generated_project_runs_on_celery_fleet_up(tmp_path: Path) -> None:
    root = generate_project(tmp_path / "shop")
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    port, redis_port, exporter_port = free_port(), free_port(), free_port()
    log = tmp_path / "up.log"
    argv = [
        sys.executable, "-m", "celery_fleet.cli", "up", "--app", PROJECT,
        "--port", str(port), "--redis-port", str(redis_port), "--exporter-port", str(exporter_port),
        "--data-dir", str(tmp_path / "data"), "--workers", "1", "--no-autoscale", "--no-beat",
        "--drain-window", "3", "--time-limit", "60", "--soft-time-limit", "50",
    ]  # fmt: skip
    with log.open("ab") as out:
        up = subprocess.Popen(argv, cwd=root, env=project_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: up.poll() is None and httpx.get(f"{url}/readyz", timeout=2).status_code == 200,
            timeout=120,
            what=f"the generated project's /readyz (log: {log.read_text()[-2000:]})",
        )
        assert httpx.get(f"{url}/readyz", timeout=5).json() == {
            "status": "ok",
            "checks": ["database", "broker"],
        }
        # `up` prints where everything is once the web answers: poll for it, it may come a moment later.
        wait_until(lambda: f"workers:   {QUEUE}=1" in log.read_text(), timeout=30, what="up's summary")
        # As the project's own code publishes: Django set up, its Celery app loaded (shop/__init__.py).
        publish = textwrap.dedent(f"""
            import django, shop
            django.setup()
            from orders.tasks import ship
            for i in range(3):
                ship.delay(f"order-{{i}}", {str(shipped)!r})
        """)
        subprocess.run(
            [sys.executable, "-c", publish],
            cwd=root,
            env={**project_env(), "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0"},
            check=True,
            timeout=120,
        )
        wait_until(
            lambda: sorted(p.name for p in shipped.iterdir()) == ["order-0", "order-1", "order-2"],
            timeout=90,
            what="the project's own task to run on the fleet's worker",
        )
        metrics = httpx.get(f"http://127.0.0.1:{exporter_port}/metrics", timeout=10).text
        assert f'celery_queue_length{{queue_name="{QUEUE}"}} 0.0' in metrics
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(90) == 0, log.read_text()[-3000:]
