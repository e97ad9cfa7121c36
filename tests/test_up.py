"""`celery-fleet up` as a user runs it: the whole fleet as real processes, Ctrl-C, and again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from celery_fleet.local.waiting import free_port, wait_until
from tests.support.fleet import EXAMPLE, EXAMPLE_DIR


def start_up(data_dir: Path, port: int, redis_port: int, workers: int, log: Path) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "celery_fleet.cli", "up",
        "--port", str(port), "--redis-port", str(redis_port), "--data-dir", str(data_dir),
        "--workers", str(workers), "--no-autoscale", "--exporter-port", "0", "--no-beat",
        "--drain-window", "3", "--time-limit", "60", "--soft-time-limit", "50",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "CELERY_", "DJANGO_"))}
    # The example project, named as a user names theirs: the queues come from what its app declares.
    env.update(JOBS_STEP_DELAY="0.01", CELERY_FLEET_APP=EXAMPLE.celery_app, PYTHONPATH=str(EXAMPLE_DIR))
    return subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)


def test_up_runs_the_fleet_stops_gracefully_and_keeps_queued_work(tmp_path: Path) -> None:
    port, redis_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "up.log"

    # First run: no worker on the user-jobs queue, so the job waits in Redis.
    first = start_up(tmp_path / "data", port, redis_port, 0, log)
    try:
        wait_until(
            lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, timeout=90, what="fleet up"
        )
        assert "workers:   default=0, exports=1, periodic=1" in log.read_text()
        job = httpx.post(f"{url}/api/jobs/", json={"kind": "random_users", "total": 50}, timeout=10).json()
        assert httpx.get(job["url"], timeout=5).json()["state"] == "PENDING"
        children = psutil.Process(first.pid).children(recursive=True)
        assert len(children) >= 4  # redis, web (+ its workers), two workers
    finally:
        first.send_signal(signal.SIGINT)
        assert first.wait(60) == 0, log.read_text()[-3000:]
    left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left behind: {left}"
    assert (tmp_path / "data" / "redis" / "appendonlydir").exists()

    # Second run on the same data folder: the queued job is still there and now runs.
    second = start_up(tmp_path / "data", port, redis_port, 1, log)
    try:
        done = wait_until(
            lambda: (j := httpx.get(job["url"], timeout=5).json())["state"] == "SUCCESS" and j,
            timeout=120,
            what="the job queued before the restart to finish",
        )
        assert done["result"]["created"] == 50
    finally:
        second.send_signal(signal.SIGINT)
        assert second.wait(60) == 0


def test_up_replaces_a_crashed_worker(tmp_path: Path) -> None:
    port, redis_port = free_port(), free_port()
    log = tmp_path / "up.log"
    fleet = start_up(tmp_path / "data", port, redis_port, 1, log)
    try:
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200,
            timeout=90,
            what="fleet up",
        )

        def workers() -> list[psutil.Process]:
            return [
                p
                for p in psutil.Process(fleet.pid).children()
                if "worker" in p.cmdline() and "default-" in " ".join(p.cmdline())
            ]

        victim = wait_until(lambda: workers(), timeout=30, what="the default worker")[0]
        victim.kill()
        replacement = wait_until(
            lambda: [p for p in workers() if p.pid != victim.pid], timeout=30, what="a replacement worker"
        )
        assert len(replacement) == 1
    finally:
        fleet.send_signal(signal.SIGINT)
        assert fleet.wait(60) == 0
