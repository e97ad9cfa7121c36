"""Real processes for integration tests: workers, gunicorn, migrations, on a test's own data."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from celery_fleet import roles
from celery_fleet.lifecycle import READY_FILE
from celery_fleet.local.processes import ManagedProcess, file_sink
from celery_fleet.local.waiting import free_port, wait_until
from celery_fleet.project import Project

REPO = Path(__file__).resolve().parents[2]
#: The bundled example project the tests run (example/ on PYTHONPATH, as `make up` has it).
EXAMPLE_DIR = REPO / "example"
EXAMPLE = Project.named("fleetsite")


def base_env(
    data_dir: Path, broker_url: str, database_url: str | None = None, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_", "DATABASE_"))}
    env.update(
        DJANGO_SETTINGS_MODULE=EXAMPLE.settings_module,
        PYTHONPATH=os.pathsep.join([str(EXAMPLE_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]),
        CELERY_FLEET_DATA_DIR=str(data_dir),
        CELERY_BROKER_URL=broker_url,
        DATABASE_URL=database_url or f"sqlite:///{data_dir / 'db.sqlite3'}",
        SECRET_KEY="test-secret-key-not-for-production",
        DEBUG="0",
        ALLOWED_HOSTS="127.0.0.1,localhost,testserver",
        JOBS_STEP_DELAY="0.01",
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def migrate(env: dict[str, str]) -> None:
    subprocess.run(roles.manage_argv("migrate", "--no-input", "-v", "0"), env=env, check=True, timeout=300)


@dataclass
class Fleet:
    """The processes of one test; every one is stopped at teardown."""

    data_dir: Path
    env: dict[str, str]
    log_path: Path
    processes: list[ManagedProcess] = field(default_factory=list)
    _count: int = 0

    def start_worker(
        self,
        queues: Sequence[str] = ("default", "exports", "periodic"),
        *,
        concurrency: int = 1,
        name: str | None = None,
        wait_ready: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> ManagedProcess:
        self._count += 1
        name = name or f"worker{self._count}"
        probe_dir = self.data_dir / "probes" / name
        env = roles.worker_env({**self.env, **(extra_env or {})}, probe_dir)
        argv = roles.worker_argv(
            queues, app=EXAMPLE.celery_app, hostname=f"{name}@test", concurrency=concurrency
        )
        process = ManagedProcess(name, argv, env=env, sink=file_sink(self.log_path)).start()
        process.probe_dir = probe_dir  # type: ignore[attr-defined]
        self.processes.append(process)
        if wait_ready:
            wait_until(
                lambda: (probe_dir / READY_FILE).exists() or _raise_if_dead(process),
                timeout=60,
                what=f"{name} to be ready",
            )
        return process

    def start_web(self, *, extra_env: dict[str, str] | None = None, port: int | None = None) -> str:
        port = port or free_port()
        env = {
            **self.env,
            "PORT": str(port),
            "WEB_HOST": "127.0.0.1",
            "WEB_CONCURRENCY": "2",
            **(extra_env or {}),
        }
        process = ManagedProcess(
            "web", roles.web_argv(EXAMPLE.asgi_application), env=env, sink=file_sink(self.log_path)
        ).start()
        self.processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: _raise_if_dead(process) or httpx.get(f"{url}/healthz", timeout=1).status_code == 200,
            timeout=60,
            what="gunicorn to answer /healthz",
        )
        process.url = url  # type: ignore[attr-defined]
        return url

    def start(
        self, name: str, argv: Sequence[str], *, extra_env: dict[str, str] | None = None
    ) -> ManagedProcess:
        """Any other process of the fleet (a sweeper, beat), logging to the fleet's log."""
        process = ManagedProcess(
            name, argv, env={**self.env, **(extra_env or {})}, sink=file_sink(self.log_path)
        )
        self.processes.append(process.start())
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop(signal.SIGTERM, timeout=20)

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""


def accepted_connections(pid: int, port: int) -> int:
    """Connections the worker processes of server ``pid`` have accepted (not just queued by the kernel)."""
    total = 0
    for child in psutil.Process(pid).children(recursive=True):
        total += sum(
            1
            for c in child.net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
        )
    return total


def _raise_if_dead(process: ManagedProcess) -> bool:
    code = process.returncode()
    if code is not None:
        raise RuntimeError(f"{process.name} exited with {code} before it was ready")
    return False
