"""The container image, for real: built with Docker from a locally made Debian base, run as web,
worker, migrations next to Redis and PostgreSQL containers on a Docker network; a job submitted
over HTTP finishes; a worker stopped with ``docker stop`` mid-task drains or requeues its task.

The first run debootstraps the bases (a few minutes, cached under .cache/docker/); warm runs
reuse the images and Docker's layer cache.
"""

from __future__ import annotations

import glob
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from celery_fleet.local.waiting import wait_until
from tests.support import docker as d

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

REDIS_PASSWORD = "redis-test-password"
DB_PASSWORD = "postgres-test-password"
#: Job states of a task a worker is running (jobs.models.JobState).
RUNNING = {"STARTED", "PROGRESS"}


@pytest.fixture(scope="module")
def images() -> str:
    started = time.monotonic()
    d.ensure_engine()
    d.ensure_base_images()
    tag = d.build_app_image()
    d.build_standins()
    print(f"images ready in {time.monotonic() - started:.1f}s")
    return tag


@dataclass
class Stack:
    net: d.Network
    image: str
    env: dict[str, str]
    base_url: str

    def start_worker(
        self, name: str, *, drain_window: int, step_delay: float, concurrency: int = 1
    ) -> d.Container:
        env = {
            **self.env,
            "CELERY_FLEET_DRAIN_WINDOW": str(drain_window),
            "JOBS_STEP_DELAY": str(step_delay),
        }
        worker = self.net.run(
            self.image,
            "worker",
            "--queues",
            "default,exports,periodic",
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"{name}@%h",
            name=name,
            env=env,
            read_only=True,
        )
        d.wait_until_worker_ready(worker)
        return worker

    def submit(self, total: int) -> str:
        response = httpx.post(
            f"{self.base_url}/api/jobs/", json={"kind": "random_users", "total": total}, timeout=30
        )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def job(self, job_id: str, wait: float = 0) -> dict:
        response = httpx.get(f"{self.base_url}/api/jobs/{job_id}", params={"wait": wait}, timeout=wait + 30)
        response.raise_for_status()
        return dict(response.json())

    def wait_for(self, job_id: str, states: set[str], timeout: float) -> dict:
        return wait_until(
            lambda: (job := self.job(job_id, wait=5))["state"] in states and job,
            timeout=timeout,
            interval=0.2,
            what=f"job {job_id} in {sorted(states)}",
        )


@pytest.fixture(scope="module")
def stack(images: str) -> Iterator[Stack]:
    with d.network() as net:
        net.run(d.REDIS_IMAGE, name="redis", env={"REDIS_PASSWORD": REDIS_PASSWORD})
        net.run(
            d.POSTGRES_IMAGE,
            name="postgres",
            env={"POSTGRES_USER": "fleet", "POSTGRES_PASSWORD": DB_PASSWORD, "POSTGRES_DB": "fleet"},
        )
        env = {
            "SECRET_KEY": "image-test-secret-key",
            "DATABASE_URL": f"postgres://fleet:{DB_PASSWORD}@postgres:5432/fleet",
            "CELERY_BROKER_URL": f"redis://:{REDIS_PASSWORD}@redis:6379/0",
            "ALLOWED_HOSTS": "127.0.0.1,localhost,web",
        }
        d.run_migrations(net, images, env)
        web = net.run(
            images, "web", name="web", env={**env, "WEB_CONCURRENCY": "2"}, publish=[8000], read_only=True
        )
        base_url = f"http://127.0.0.1:{web.host_port(8000)}"
        try:
            wait_until(
                lambda: httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200,
                timeout=120,
                interval=0.5,
                what="web /readyz",
            )
        except Exception:
            print(web.logs())
            raise
        yield Stack(net=net, image=images, env=env, base_url=base_url)
        for container in net.containers:
            print(f"--- {container.name}\n{container.logs(60)}")


def test_image_runs_as_non_root_with_exec_form_entrypoint(images: str) -> None:
    config = d.image_config(images)
    assert config["User"] == "10001:10001"
    assert isinstance(config["Entrypoint"], list)
    assert config["Entrypoint"][0].startswith("/")
    assert config["Cmd"] == ["web"]
    dockerfile = (d.DOCKER_DIR / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in dockerfile
    assert d.docker(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp", images, "celery-fleet", "--version"
    ).startswith("celery-fleet")


def test_build_certificates_stay_out_of_the_final_image(images: str) -> None:
    host_certs = glob.glob(d.HOST_CA_GLOB)
    if not host_certs:
        pytest.skip("this machine has no extra build-time CA certificates")
    listing = d.docker(
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        images,
        "-c",
        "ls -A /usr/local/share/ca-certificates/ 2>/dev/null; echo; cat /etc/ssl/certs/ca-certificates.crt",
    )
    for cert in host_certs:
        body = "".join(Path(cert).read_text().split("-----")[2].split())
        assert Path(cert).name not in listing
        assert body[:64] not in "".join(listing.split()), f"{cert} leaked into the final image"


def test_job_submitted_over_http_finishes(stack: Stack) -> None:
    worker = stack.start_worker("worker-a", drain_window=30, step_delay=0)
    try:
        # The worker role of the entrypoint sets REMAP_SIGTERM=SIGQUIT for PID 1 (celery itself).
        environ = d.docker("exec", worker.name, "cat", "/proc/1/environ").split("\0")
        assert "REMAP_SIGTERM=SIGQUIT" in environ
        assert "celery" in d.docker("exec", worker.name, "cat", "/proc/1/cmdline").replace("\0", " ")
        job_id = stack.submit(60)
        job = stack.wait_for(job_id, {"SUCCESS", "FAILURE"}, timeout=120)
        assert job["state"] == "SUCCESS", job
        assert job["result"] == {"total": 60, "created": 60, "already_present": 0}
        assert job["attempts"] == 1
    finally:
        worker.remove()


def test_docker_stop_mid_task_requeues_and_another_worker_finishes(stack: Stack) -> None:
    # Drain window 4 s, ~9 s of work: the soft shutdown gives up and requeues the task at once.
    first = stack.start_worker("worker-b", drain_window=4, step_delay=0.3)
    second = None
    try:
        job_id = stack.submit(300)
        running = wait_until(
            lambda: (j := stack.job(job_id))["state"] in RUNNING and j["progress"] > 0 and j,
            timeout=60,
            interval=0.1,
            what="the job running",
        )
        grace = 4 + 10  # the chart's terminationGracePeriodSeconds for this drain window
        started = time.monotonic()
        first.stop(timeout=grace)
        stopped_in = time.monotonic() - started
        state = first.state()
        assert state["ExitCode"] != 137, f"worker was killed: {state}\n{first.logs()}"
        assert not state["OOMKilled"], state
        assert stopped_in < grace, f"worker needed {stopped_in:.1f}s, the grace period is {grace}s"
        interrupted = stack.job(job_id)
        assert interrupted["state"] != "SUCCESS", (
            "the task finished before the drain window ended; make it longer"
        )
        second = stack.start_worker("worker-c", drain_window=30, step_delay=0.01)
        job = stack.wait_for(job_id, {"SUCCESS", "FAILURE"}, timeout=120)
        assert job["state"] == "SUCCESS", job
        # Requeued once, finished by the second worker, nobody made twice (the job id is the key).
        assert job["attempts"] == 2, job
        result = job["result"]
        assert result["total"] == 300
        assert result["created"] + result["already_present"] == 300
        assert result["already_present"] > 0, "the second delivery should find the first one's users"
        assert running["progress"] > 0
        print(
            f"requeued: 1 task; stop took {stopped_in:.1f}s; second delivery created {result['created']}, "
            f"found {result['already_present']} already made"
        )
    finally:
        first.remove()
        if second is not None:
            second.remove()


def test_docker_stop_mid_task_lets_a_short_task_finish_in_the_drain_window(stack: Stack) -> None:
    # Drain window 10 s, ~2 s of work: the stopping worker finishes it and acks; no redelivery.
    # (Celery's soft shutdown sleeps the whole drain window when a task was running at SIGTERM.)
    worker = stack.start_worker("worker-d", drain_window=10, step_delay=0.2)
    try:
        job_id = stack.submit(100)
        wait_until(
            lambda: stack.job(job_id)["state"] in RUNNING, timeout=60, interval=0.05, what="the job running"
        )
        grace = 10 + 10
        started = time.monotonic()
        worker.stop(timeout=grace)
        stopped_in = time.monotonic() - started
        state = worker.state()
        assert state["ExitCode"] != 137, f"worker was killed: {state}\n{worker.logs()}"
        assert stopped_in < grace, f"worker needed {stopped_in:.1f}s, the grace period is {grace}s"
        job = stack.job(job_id)
        assert job["state"] == "SUCCESS", f"{job}\n{worker.logs()}"
        assert job["attempts"] == 1
        assert job["result"]["created"] == 100
        print(f"finished in the drain window: 1 task; stop took {stopped_in:.1f}s")
    finally:
        worker.remove()
