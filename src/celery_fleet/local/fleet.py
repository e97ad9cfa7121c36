"""The local fleet: every component of the cluster deployment as a process on this machine."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery_fleet import roles
from celery_fleet.local.processes import LineSink, ManagedProcess, console_sink
from celery_fleet.local.redis_server import RedisServer
from celery_fleet.local.waiting import port_open, wait_until
from celery_fleet.local.workers import WorkerGroup, default_groups
from celery_fleet.project import Project
from celery_fleet.timings import Timings

logger = logging.getLogger("celery_fleet.local.fleet")


@dataclass
class FleetConfig:
    data_dir: Path
    #: The user's project: Celery app, ASGI application, settings module.
    project: Project
    #: The queues to run worker groups for (one group each), the first being the user-jobs queue.
    queues: tuple[str, ...]
    web_host: str = "127.0.0.1"
    web_port: int = 8000
    start_workers: int = 2
    max_workers: int = 4
    concurrency: int = 1
    autoscale: bool = True
    autoscale_interval: float = 5.0
    exporter_port: int = 9808
    beat: bool = True
    broker_url: str | None = None
    redis_port: int = 6390
    timings: Timings = field(default_factory=Timings)
    loglevel: str = "INFO"
    secret_key: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)


class LocalFleet:
    def __init__(self, config: FleetConfig, sink: LineSink | None = None) -> None:
        self.config = config
        self.sink = sink or console_sink()
        self.redis: RedisServer | None = None
        self.services: list[ManagedProcess] = []
        self.groups: dict[str, WorkerGroup] = {}
        self.autoscaler: Any = None
        self._autoscaler_stop = threading.Event()
        self._autoscaler_thread: threading.Thread | None = None

    # --- environment -----------------------------------------------------------------------
    @property
    def broker_url(self) -> str:
        if self.config.broker_url:
            return self.config.broker_url
        # The local redis-server's address, also before it runs (the environment is built first).
        return self.redis.url if self.redis is not None else f"redis://127.0.0.1:{self.config.redis_port}/0"

    def env(self) -> dict[str, str]:
        config = self.config
        env = dict(os.environ)
        env["DJANGO_SETTINGS_MODULE"] = config.project.settings_module
        env["CELERY_FLEET_APP"] = config.project.celery_app
        env.setdefault("DATABASE_URL", f"sqlite:///{config.data_dir / 'db.sqlite3'}")
        env.setdefault("ALLOWED_HOSTS", f"127.0.0.1,localhost,{config.web_host}")
        if config.secret_key:
            env.setdefault("SECRET_KEY", config.secret_key)
        env.update(
            CELERY_BROKER_URL=self.broker_url,
            CELERY_FLEET_DATA_DIR=str(config.data_dir),
            CELERY_FLEET_QUEUES=",".join(config.queues),
            CELERY_TASK_SOFT_TIME_LIMIT=str(config.timings.soft_time_limit),
            CELERY_TASK_TIME_LIMIT=str(config.timings.time_limit),
            CELERY_FLEET_DRAIN_WINDOW=str(config.timings.drain_window),
            PYTHONUNBUFFERED="1",
        )
        env.update(config.extra_env)
        return env

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        (config.data_dir / "static").mkdir(exist_ok=True)  # whitenoise serves from the app folders
        if config.broker_url is None:
            if port_open("127.0.0.1", config.redis_port):
                raise RuntimeError(
                    f"port {config.redis_port} is taken; pass --redis-port or --broker-url to use that Redis"
                )
            self.redis = RedisServer(data_dir=config.data_dir / "redis", port=config.redis_port)
            self._say(
                "redis",
                f"starting redis-server on {self.redis.url} (append-only file in {self.redis.data_dir})",
            )
            self.redis.start()
        env = self.env()
        self._say("migrate", "applying database migrations")
        subprocess.run(roles.manage_argv("migrate", "--no-input", "-v", "1"), env=env, check=True)

        web_env = {**env, "PORT": str(config.web_port), "WEB_HOST": config.web_host}
        self._service("web", roles.web_argv(config.project.asgi_application), web_env)
        for spec in default_groups(config.start_workers, config.max_workers, config.queues):
            spec.concurrency = config.concurrency
            group = WorkerGroup(
                spec=spec,
                env=env,
                probe_root=config.data_dir / "probes",
                sink=self.sink,
                grace_period=float(config.timings.effective_grace_period),
                celery_app=config.project.celery_app,
                loglevel=config.loglevel,
            )
            self.groups[spec.name] = group
            group.scale_up(spec.initial_workers)
        if config.exporter_port and importlib.util.find_spec("celery_fleet.exporter") is not None:
            self._service(
                "exporter",
                [sys.executable, "-m", "celery_fleet.cli", "exporter", "--port", str(config.exporter_port)],
                env,
            )
        if config.beat:
            beat_env = {**env, "CELERY_FLEET_PROBE_DIR": str(config.data_dir / "probes" / "beat")}
            self._service(
                "beat", roles.beat_argv(app=config.project.celery_app, loglevel=config.loglevel), beat_env
            )
        wait_until(
            lambda: port_open(
                config.web_host if config.web_host != "0.0.0.0" else "127.0.0.1", config.web_port
            ),
            timeout=60,
            what="the web tier",
        )
        if config.autoscale:
            self._start_autoscaler()

    def _service(self, name: str, argv: list[str], env: dict[str, str]) -> ManagedProcess:
        process = ManagedProcess(name, argv, env=env, sink=self.sink).start()
        self.services.append(process)
        return process

    def _start_autoscaler(self) -> None:
        try:
            from celery_fleet.autoscale.local import build_local_autoscaler
        except ImportError:
            self._say("autoscaler", "not available in this build; workers stay at their starting count")
            return
        self.autoscaler = build_local_autoscaler(self)
        self._autoscaler_thread = threading.Thread(
            target=self._autoscale_loop, name="autoscaler", daemon=True
        )
        self._autoscaler_thread.start()

    def _autoscale_loop(self) -> None:
        while not self._autoscaler_stop.wait(self.config.autoscale_interval):
            try:
                self.autoscaler.step()
            except Exception as exc:  # a bad scrape must not stop the fleet
                self._say("autoscaler", f"step failed: {exc!r}")

    def check(self) -> None:
        """Restart services and replace workers that died on their own."""
        for group in self.groups.values():
            for worker in group.replace_crashed():
                self._say(worker.name, "replacing a worker that exited on its own")
        for process in list(self.services):
            code = process.returncode()
            if code is not None:
                self._say(process.name, f"exited with {code}; restarting")
                self.services.remove(process)
                self._service(process.name, process.argv, process.env)

    def stop(self) -> None:
        self._autoscaler_stop.set()
        if self._autoscaler_thread is not None:
            self._autoscaler_thread.join(timeout=30)
        for name in ("beat", "web"):
            for process in [p for p in self.services if p.name == name]:
                self._say(name, "stopping")
                process.stop(signal.SIGTERM, timeout=30)
        self._say("workers", "stopping: running tasks finish or are requeued within the drain window")
        threads = [threading.Thread(target=g.stop_all) for g in self.groups.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for process in [p for p in self.services if p.name == "exporter"]:
            process.stop(signal.SIGTERM, timeout=10)
        if self.redis is not None:
            self._say("redis", "stopping (append-only file kept)")
            self.redis.stop()

    def kill(self) -> None:
        for process in self.services:
            process.send(signal.SIGKILL)
        for group in self.groups.values():
            for worker in group.workers + group.draining:
                worker.process.send(signal.SIGKILL)
        if self.redis is not None and self.redis.process is not None:
            self.redis.process.kill()

    # --- output ----------------------------------------------------------------------------
    def _say(self, name: str, message: str) -> None:
        self.sink(name, message)

    def print_urls(self) -> None:
        config = self.config
        host = "127.0.0.1" if config.web_host in ("0.0.0.0", "::") else config.web_host
        lines = [
            f"web:       http://{host}:{config.web_port}/",
            f"API docs:  http://{host}:{config.web_port}/api/docs/",
            f"broker:    {self.broker_url}",
            f"data:      {config.data_dir}",
        ]
        if any(p.name == "exporter" for p in self.services):
            lines.append(f"metrics:   http://127.0.0.1:{config.exporter_port}/metrics")
        groups = ", ".join(f"{g.spec.name}={g.replicas()}" for g in self.groups.values())
        lines.append(f"workers:   {groups} (autoscale {'on' if self.autoscaler else 'off'})")
        lines.append("Ctrl-C stops the fleet gracefully.")
        for line in lines:
            self._say("celery-fleet", line)
