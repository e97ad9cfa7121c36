"""docs/adopt.md, done by a test: a Django + Celery project celery-fleet has never seen, generated
here with ``django-admin startproject``, adopts the library and runs on ``celery-fleet up --app``;
the chart renders it (``app.*`` set) into valid objects whose environment passes its own
``check --deploy``; and, with Docker, its image is built with docker/build-image.sh and run: web's
/readyz answers and its task runs on a worker container (tests/support/docker.build_project_image
is the reusable build for the e2e suite's install of the same project)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

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
import dj_database_url

from celery_fleet.django.security import https_settings
from celery_fleet.env import env
from celery_fleet.presets import safe_delivery_settings
from celery_fleet.timings import Timings

INSTALLED_APPS += ["celery_fleet.django", "orders"]
# 12-factor: what the chart's ConfigMap and Secrets (and `celery-fleet up`) set.
DEBUG = env.bool("DEBUG", False)
SECRET_KEY = env.str("SECRET_KEY", SECRET_KEY)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", [])
_database_url = env.str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(_database_url)}
globals().update(https_settings())
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
globals().update(safe_delivery_settings(broker_url=CELERY_BROKER_URL, timings=Timings()))
CELERY_TASK_DEFAULT_QUEUE = "orders"
"""

#: The project's own dependencies (the image installs them; celery-fleet brings Django and Celery).
REQUIREMENTS = "dj-database-url>=2.3\npsycopg[binary]>=3.2\n"

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
    (root / "requirements.txt").write_text(REQUIREMENTS, encoding="utf-8")
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


# ------------------------------------------------------------------------------ the chart

ADOPT_DOC = Path(__file__).resolve().parents[1] / "docs" / "adopt.md"


def documented_install() -> tuple[dict[str, str], dict[str, Any]]:
    """docs/adopt.md, 5, as written: the ``--set`` pairs of its ``helm install`` and its values file."""
    text = ADOPT_DOC.read_text(encoding="utf-8")
    section = text[text.index("## 5. Install the chart") :]
    install = section[section.index("$ helm install") : section.index("$ helm test")]
    sets = dict(pair.split("=", 1) for pair in re.findall(r"--set (\S+)", install))
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None, "docs/adopt.md, 5 has no values file"
    return sets, yaml.safe_load(block.group(1))


def test_the_generated_project_renders_with_the_chart_into_valid_objects(tmp_path: Path) -> None:
    from tests.support import helm as h

    sets, values = documented_install()
    assert sets["app.celeryApp"] == PROJECT
    values_file = tmp_path / "shop-values.yaml"
    values_file.write_text(yaml.safe_dump(values), encoding="utf-8")
    docs = h.render([values_file], sets, release="shop", namespace="shop")
    assert "fleetsite" not in yaml.safe_dump_all(docs)
    assert h.openapi_errors([d for d in docs if d["kind"] not in {"ScaledObject", "ServiceMonitor"}]) == []
    worker = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-worker-orders")
    )
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/shop:1.0.0"
    assert container["command"][:6] == ["celery", "-A", PROJECT, "worker", "--queues", QUEUE]
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    assert scaled["spec"]["triggers"][0]["metadata"]["threshold"] == "8"  # 2 per process x concurrency 4
    # The project's own settings with the environment the chart gives its web container: deploy-ready.
    root = generate_project(tmp_path / "shop")
    web = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-web"))
    environ = h.container_environment(docs, web["spec"]["template"]["spec"]["containers"][0])
    assert environ["SECURE_SSL_REDIRECT"] == "true"
    done = subprocess.run(
        [sys.executable, "-m", "django", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=root,
        env={**project_env(), **environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout


# ------------------------------------------------------------------------------ the image


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_generated_project_image_serves_and_runs_its_task(tmp_path: Path) -> None:
    from tests.support import docker as d

    root = generate_project(tmp_path / "shop")
    d.ensure_engine()
    d.ensure_base_images()
    d.build_standins()
    image = d.build_project_image(root, "celery-fleet-adopt-shop:test", app=PROJECT)
    config = d.image_config(image)
    assert config["User"] == "10001:10001"
    assert f"CELERY_FLEET_APP={PROJECT}" in config["Env"]
    with d.network() as net:
        net.run(d.REDIS_IMAGE, name="redis", env={"REDIS_PASSWORD": "shop-redis"})
        net.run(
            d.POSTGRES_IMAGE,
            name="postgres",
            env={"POSTGRES_USER": "shop", "POSTGRES_PASSWORD": "shop-db", "POSTGRES_DB": "shop"},
        )
        env = {
            "SECRET_KEY": "adopt-test-" + "k" * 50,
            "DATABASE_URL": "postgres://shop:shop-db@postgres:5432/shop",
            "CELERY_BROKER_URL": "redis://:shop-redis@redis:6379/0",
            "ALLOWED_HOSTS": "127.0.0.1,localhost,web",
        }
        d.run_migrations(net, image, env)
        web = net.run(image, "web", name="web", env=env, publish=[8000], read_only=True)
        worker = net.run(image, "worker", "--concurrency", "1", name="worker", env=env, read_only=True)
        url = f"http://127.0.0.1:{web.host_port(8000)}"
        wait_until(
            lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200,
            timeout=180,
            interval=0.5,
            what=f"the project's /readyz in its image (logs: {web.logs(40)})",
        )
        assert httpx.get(f"{url}/readyz", timeout=5).json() == {
            "status": "ok",
            "checks": ["database", "broker"],
        }
        d.wait_until_worker_ready(worker)
        # The project's code publishes from the web container; the worker container runs the task.
        publish = (
            "import django; django.setup(); from orders.tasks import ship; ship.delay('order-7', '/tmp')"
        )
        d.docker("exec", web.name, "python", "-c", publish, timeout=120)
        wait_until(
            lambda: (
                d.run(["docker", "exec", worker.name, "cat", "/tmp/order-7"], check=False).stdout == "shipped"
            ),
            timeout=120,
            interval=0.5,
            what=f"the project's task to run on the worker container (logs: {worker.logs(40)})",
        )
        assert d.run(["docker", "exec", web.name, "test", "-e", "/tmp/order-7"], check=False).returncode == 1


def test_the_image_recipe_refuses_a_folder_that_is_not_the_project(tmp_path: Path) -> None:
    root = generate_project(tmp_path / "shop")
    script = Path(__file__).resolve().parents[1] / "docker" / "build-image.sh"
    for argv, message in [
        ([str(tmp_path / "missing"), "shop:1"], "is not a folder"),
        ([str(root / "orders"), "shop:1"], "no package or module 'orders'"),
        (["--app", "nosuchapp", str(root), "shop:1"], "no package or module 'nosuchapp'"),
        ([str(root)], "Build the celery-fleet image"),
    ]:
        done = subprocess.run(["sh", str(script), *argv], capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr
