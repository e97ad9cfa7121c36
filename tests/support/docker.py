"""A real Docker engine for the image tests: install and start it, build the images, run containers.

No container registry is reachable here, so every image is built locally:

* ``celery-fleet-base:bookworm`` -- ``debootstrap --variant=minbase bookworm`` with python3 and
  python3-venv, ``docker import``-ed (docker/base-image.sh; the tarball is cached under .cache/docker/);
  it stands in for the official ``python:3.11-slim-bookworm`` (``ARG BASE_IMAGE``).
* ``celery-fleet-services:bookworm`` -- the same with Debian's redis-server and postgresql-15,
  the base of the Redis/PostgreSQL stand-ins in docker/standins/.
* the application image from docker/Dockerfile.
"""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "docker"
APP_IMAGE = "celery-fleet:test"
BASE_IMAGE = "celery-fleet-base:bookworm"
SERVICES_IMAGE = "celery-fleet-services:bookworm"
REDIS_IMAGE = "celery-fleet-redis:test"
POSTGRES_IMAGE = "celery-fleet-postgres:test"
#: Build-time CA certificates of this machine (pip goes through a TLS-inspecting proxy here).
HOST_CA_GLOB = "/usr/local/share/ca-certificates/*.crt"


class DockerError(RuntimeError):
    """A docker command failed; the message carries its output."""


def run(args: Sequence[str], *, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise DockerError(
            f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def docker(*args: str, timeout: float = 600, check: bool = True) -> str:
    return run(["docker", *args], timeout=timeout, check=check).stdout.strip()


def ensure_engine() -> None:
    """Install docker.io + debootstrap when missing and start dockerd when it is not running."""
    run(["bash", str(DOCKER_DIR / "ensure-docker.sh")], timeout=900)


def ensure_base_images() -> None:
    for kind in ("python", "services"):
        run(["bash", str(DOCKER_DIR / "base-image.sh"), kind], timeout=1200)


def stage_build_certs() -> list[str]:
    """Copy this machine's extra CA certificates into docker/build-certs/ (builder stage only)."""
    target = DOCKER_DIR / "build-certs"
    names = []
    for path in glob.glob(HOST_CA_GLOB):
        shutil.copy2(path, target / Path(path).name)
        names.append(Path(path).name)
    return names


def build_app_image(tag: str = APP_IMAGE, base: str = BASE_IMAGE) -> str:
    stage_build_certs()
    docker(
        "build",
        "-q",
        "-f",
        str(DOCKER_DIR / "Dockerfile"),
        "--build-arg",
        f"BASE_IMAGE={base}",
        "-t",
        tag,
        str(ROOT),
        timeout=1500,
    )
    return tag


def build_project_image(project_dir: Path, tag: str, *, app: str, base: str = BASE_IMAGE) -> str:
    """The image of a project outside this repository, built the way docs/adopt.md says
    (docker/build-image.sh: this checkout's library + the project, docker/Dockerfile)."""
    stage_build_certs()
    run(
        [
            "sh",
            str(DOCKER_DIR / "build-image.sh"),
            "--app",
            app,
            "--base",
            base,
            str(project_dir),
            tag,
            "-q",
        ],
        timeout=1500,
    )
    return tag


def build_standins(redis_tag: str = REDIS_IMAGE, postgres_tag: str = POSTGRES_IMAGE) -> None:
    context = str(DOCKER_DIR / "standins")
    for dockerfile, tag in (("redis.Dockerfile", redis_tag), ("postgres.Dockerfile", postgres_tag)):
        docker(
            "build",
            "-q",
            "-f",
            f"{context}/{dockerfile}",
            "--build-arg",
            f"SERVICES_IMAGE={SERVICES_IMAGE}",
            "-t",
            tag,
            context,
            timeout=600,
        )


def image_config(tag: str) -> dict:
    return json.loads(docker("image", "inspect", tag))[0]["Config"]


@dataclass
class Container:
    name: str
    network: str

    def logs(self, tail: int = 200) -> str:
        proc = run(["docker", "logs", "--tail", str(tail), self.name], check=False)
        return proc.stdout + proc.stderr

    def state(self) -> dict:
        return json.loads(docker("inspect", "--format", "{{json .State}}", self.name))

    def host_port(self, container_port: int) -> int:
        out = docker("port", self.name, f"{container_port}/tcp")
        return int(out.splitlines()[0].rsplit(":", 1)[1])

    def stop(self, timeout: int) -> None:
        docker("stop", "--time", str(timeout), self.name, timeout=timeout + 60)

    def remove(self) -> None:
        run(["docker", "rm", "-f", "-v", self.name], check=False)


@dataclass
class Network:
    """A user-defined Docker network (container names resolve) and the containers on it."""

    name: str = field(default_factory=lambda: f"fleet-test-{uuid.uuid4().hex[:8]}")
    containers: list[Container] = field(default_factory=list)

    def create(self) -> Network:
        docker("network", "create", self.name)
        return self

    def run(
        self,
        image: str,
        *args: str,
        name: str,
        env: dict[str, str] | None = None,
        publish: Sequence[int] = (),
        read_only: bool = False,
        user: str | None = None,
    ) -> Container:
        full = f"{self.name}-{name}"
        argv = ["run", "-d", "--name", full, "--network", self.name, "--network-alias", name]
        for key, value in (env or {}).items():
            argv += ["-e", f"{key}={value}"]
        for port in publish:
            argv += ["-p", f"127.0.0.1::{port}"]
        if read_only:
            # As the chart runs it: read-only root filesystem, writable /tmp, no capabilities.
            argv += [
                "--read-only",
                "--tmpfs",
                "/tmp:rw,exec,size=256m",
                "--cap-drop",
                "ALL",
                "--security-opt",
                "no-new-privileges",
            ]
        if user:
            argv += ["--user", user]
        container = Container(full, self.name)
        self.containers.append(container)
        docker(*argv, image, *args)
        return container

    def remove(self) -> None:
        for container in reversed(self.containers):
            container.remove()
        run(["docker", "network", "rm", self.name], check=False)


@contextmanager
def network() -> Iterator[Network]:
    net = Network().create()
    try:
        yield net
    finally:
        net.remove()


def run_migrations(net: Network, image: str, env: dict[str, str]) -> None:
    """Migrate as the chart's Job does: wait for the database, then migrate once (read-only root)."""
    migrate = net.run(
        image,
        "sh",
        "-c",
        "until python -c"
        " 'import django; django.setup(); from django.db import connection;"
        " connection.ensure_connection()'"
        " >/dev/null 2>&1; do sleep 1; done;"
        " exec python -m django migrate --no-input",
        name="migrate",
        env=env,
        read_only=True,
    )
    code = docker("wait", migrate.name, timeout=300)
    if code != "0":
        raise DockerError(f"migrations exited {code}:\n{migrate.logs()}")


def wait_until_worker_ready(worker: Container, timeout: float = 120) -> None:
    """Ready = the consumer consumes: the probe Kubernetes runs (`celery-fleet probe ready`)."""
    from celery_fleet.local.waiting import wait_until

    wait_until(
        lambda: (
            run(["docker", "exec", worker.name, "celery-fleet", "probe", "ready"], check=False).returncode
            == 0
        ),
        timeout=timeout,
        interval=0.5,
        what=f"worker container {worker.name} ready (logs: {worker.logs(40)})",
    )
