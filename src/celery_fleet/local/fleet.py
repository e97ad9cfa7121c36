"""The local fleet: every component of the cluster deployment as a process on this machine.

Start order: ports checked, redis-server, migrations, web, workers, exporter, beat, autoscaler.
Stop order (Ctrl-C): the autoscaler, then beat, web and every worker at once (workers drain:
running tasks finish or are requeued, which needs the broker), then the exporter, and
redis-server last.  Every child runs in a session of its own, so the terminal's Ctrl-C, which
goes to the whole foreground process group, reaches only ``celery-fleet up``: it alone
decides the order.  While the fleet runs, the supervision loop (:meth:`LocalFleet.check`)
replaces workers and restarts services and redis-server that died on their own.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from celery_fleet import roles
from celery_fleet.local.processes import (
    FLEET,
    LineSink,
    ManagedProcess,
    RestartBackoff,
    console_sink,
    describe_exit,
)
from celery_fleet.local.redis_server import RedisServer
from celery_fleet.local.waiting import Timeout, bind_error, port_open, wait_until
from celery_fleet.local.workers import WorkerGroup, WorkerGroupSpec, default_groups
from celery_fleet.project import Project
from celery_fleet.timings import Timings

if TYPE_CHECKING:
    from celery_fleet.autoscale.local import LocalAutoscaler
    from celery_fleet.autoscale.policy import Decision

#: Celery warns at every worker start when it runs as root (a container's or a laptop's
#: default); in `up`'s log that is 8 lines per worker saying the same thing (``--verbose``
#: keeps it).  The filter matches the warning's text, so nothing is imported to match it.
ROOT_WARNING_FILTER = "ignore:You're running the worker with superuser privileges"

#: What Celery prints to the terminal for a person at its keyboard ("Hitting Ctrl+C again
#: will terminate all running tasks!"): under `up` the keyboard is `up`'s, and the fleet says
#: itself when each worker stops.  Dropped, with blank lines, unless ``--verbose``.
CELERY_CHATTER = ("worker: Hitting Ctrl+C again", "worker: Cold shutdown", "worker: Warm shutdown")
#: Lines of redis-server's own log kept to show when it dies (printed as they come with ``--verbose``).
REDIS_LOG_TAIL = 20

#: Seconds the web tier gets to listen after its start.
WEB_START_TIMEOUT = 90.0


class FleetError(RuntimeError):
    """The fleet cannot start or run; the message says why and what to change."""


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
    exporter_host: str = "127.0.0.1"
    exporter_port: int = 9808
    beat: bool = True
    broker_url: str | None = None
    redis_port: int = 6390
    timings: Timings = field(default_factory=Timings)
    loglevel: str = "INFO"
    secret_key: str = ""
    #: Celery banners, the root warning, redis-server's notices and every migration line.
    verbose: bool = False
    #: The command that creates an admin account on this fleet's data, for the start-up hint.
    superuser_hint: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)


class LocalFleet:
    """The fleet, and the :class:`~celery_fleet.autoscale.local.ScalableFleet` its autoscaler scales."""

    def __init__(self, config: FleetConfig, sink: LineSink | None = None) -> None:
        self.config = config
        self.out = sink or console_sink()
        #: Where every line goes: the fleet's own and its processes'.
        self.sink: LineSink = self.out if config.verbose else self._without_chatter
        self._redis_log: deque[str] = deque(maxlen=REDIS_LOG_TAIL)
        self.redis: RedisServer | None = None
        self.services: list[ManagedProcess] = []
        self.groups: dict[str, WorkerGroup] = {}
        self.autoscaler: LocalAutoscaler | None = None
        #: Set by a stop request (Ctrl-C): nothing is started or restarted from then on.
        self.stop_requested = threading.Event()
        self._autoscaler_stop = threading.Event()
        self._autoscaler_thread: threading.Thread | None = None
        #: Per service: its backoff, and when a dead one starts again.
        self._backoff: dict[str, RestartBackoff] = {}
        self._restart_at: dict[str, float] = {}
        self._redis_retry_at: float | None = None
        self._scaled: set[str] = set()

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
        if not config.verbose:
            env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), ROOT_WARNING_FILTER]))
        env.update(config.extra_env)
        return env

    # --- lifecycle -------------------------------------------------------------------------
    def check_ports(self) -> None:
        """Refuse at once, before anything starts, when a port the fleet needs is taken."""
        config = self.config
        wanted = [("the web tier", config.web_host, config.web_port, "--port")]
        if config.exporter_port:
            wanted.append(
                ("the metrics exporter", config.exporter_host, config.exporter_port, "--exporter-port")
            )
        if config.broker_url is None:
            wanted.append(("redis-server", "127.0.0.1", config.redis_port, "--redis-port"))
        problems = []
        by_port: dict[int, str] = {}
        for what, _host, port, option in wanted:
            if port in by_port:
                problems.append(f"{by_port[port]} and {what} both want port {port}: change {option}")
            by_port.setdefault(port, what)
        for what, host, port, option in wanted:
            error = bind_error(host, port)
            if error is None:
                continue
            hint = f"choose another with {option}"
            if option == "--exporter-port":
                hint += " (0: no exporter)"
            if error.errno != errno.EADDRINUSE:
                problems.append(f"{what} cannot listen on {host}:{port} ({error.strerror}): {hint}")
                continue
            if option == "--redis-port":
                hint += f", or use the Redis listening there with --broker-url redis://127.0.0.1:{port}/0"
            problems.append(f"port {port} ({what}, on {host}) is in use by another program: {hint}")
        if problems:
            raise FleetError("\n".join(problems))

    def start(self) -> None:
        config = self.config
        if self.stop_requested.is_set():  # Ctrl-C while `up` looked at the project
            return
        self.check_ports()
        config.data_dir.mkdir(parents=True, exist_ok=True)
        (config.data_dir / "static").mkdir(exist_ok=True)  # whitenoise serves from the app folders
        if config.broker_url is None:
            self.redis = RedisServer(
                data_dir=config.data_dir / "redis",
                port=config.redis_port,
                sink=self._redis_line,
                loglevel="notice" if config.verbose else "warning",
            )
            try:
                self.redis.start()
            except Exception as exc:
                self._show_redis_log()
                raise FleetError(f"redis-server did not start: {exc}") from None
            self._say(f"redis-server started on {self.redis.url} (append-only file in {self.redis.data_dir})")
        env = self.env()
        self._migrate(env)
        if self.stop_requested.is_set():
            return

        web_env = {**env, "PORT": str(config.web_port), "WEB_HOST": config.web_host}
        web = self._service("web", roles.web_argv(config.project.asgi_application), web_env)
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
                quiet=not config.verbose,
            )
            self.groups[spec.name] = group
            group.scale_up(spec.initial_workers)
        if config.exporter_port:
            exporter = [sys.executable, "-m", "celery_fleet.cli", "exporter"]
            exporter += ["--host", config.exporter_host, "--port", str(config.exporter_port)]
            self._service("exporter", exporter, env)
        if config.beat:
            beat_env = {**env, "CELERY_FLEET_PROBE_DIR": str(config.data_dir / "probes" / "beat")}
            beat = roles.beat_argv(
                app=config.project.celery_app, loglevel=config.loglevel, quiet=not config.verbose
            )
            self._service("beat", beat, beat_env)
        self._wait_for_web(web)
        if config.autoscale and not self.stop_requested.is_set():
            self._start_autoscaler()

    def _migrate(self, env: dict[str, str]) -> None:
        """Apply migrations; say how many in one line (``--verbose``: every line, prefixed)."""
        began = time.monotonic()
        lines: list[str] = []

        def collect(name: str, line: str) -> None:
            lines.append(line)
            if self.config.verbose:
                self.sink(name, line)

        argv = roles.manage_argv("migrate", "--no-input", "-v", "1")
        code = ManagedProcess("migrate", argv, env=env, sink=collect).start().wait()
        if code != 0:
            if not self.config.verbose:
                for line in lines:
                    self.sink("migrate", line)
            raise FleetError(f"the database migrations {describe_exit(code)}; their output is above")
        applied = sum(1 for line in lines if line.lstrip().startswith("Applying "))
        seconds = time.monotonic() - began
        self._say(
            f"database migrated: {applied} migrations applied in {seconds:.1f} s"
            if applied
            else "database up to date: no migrations to apply"
        )

    def _wait_for_web(self, web: ManagedProcess) -> None:
        config = self.config
        host = "127.0.0.1" if config.web_host in ("0.0.0.0", "::") else config.web_host
        try:
            wait_until(
                lambda: not web.alive() or self.stop_requested.is_set() or port_open(host, config.web_port),
                timeout=WEB_START_TIMEOUT,
                what="the web tier",
            )
        except Timeout:
            raise FleetError(
                f"the web tier did not listen on {host}:{config.web_port} within {WEB_START_TIMEOUT:.0f} s;"
                " its log is above"
            ) from None
        if not web.alive():
            ended = describe_exit(web.returncode())
            raise FleetError(f"the web tier {ended} while starting; its log is above")

    def _service(self, name: str, argv: list[str], env: dict[str, str]) -> ManagedProcess:
        process = ManagedProcess(name, argv, env=env, sink=self.sink).start()
        self.services.append(process)
        self._say(f"{name} started (pid {process.pid})")
        return process

    def _start_autoscaler(self) -> None:
        from celery_fleet.autoscale.local import build_local_autoscaler

        autoscaler = build_local_autoscaler(self)
        self.autoscaler = autoscaler
        self._autoscaler_thread = threading.Thread(
            target=autoscaler.run,
            args=(self._autoscaler_stop, self.config.autoscale_interval),
            name="autoscaler",
            daemon=True,
        )
        self._autoscaler_thread.start()

    def check(self) -> None:
        """Replace workers, restart services and redis-server that died on their own."""
        if self.stop_requested.is_set():
            return
        self._check_redis()
        for group in self.groups.values():
            group.replace_crashed()
        now = time.monotonic()
        for process in list(self.services):
            code = process.returncode()
            if code is None:
                continue
            name = process.name
            if name not in self._restart_at:
                ran = now - process.started_at
                delay = self._backoff.setdefault(name, RestartBackoff()).delay_after(ran)
                self._restart_at[name] = now + delay
                later = f" in {delay:.0f} s" if delay else ""
                self._say(f"{name} {describe_exit(code)} after {ran:.0f} s; restarting{later}")
            if now >= self._restart_at[name]:
                del self._restart_at[name]
                self.services.remove(process)
                self._service(name, process.argv, process.env)

    def _check_redis(self) -> None:
        """A dead redis-server comes back on the same port and append-only file, like a worker."""
        redis = self.redis
        if redis is None or redis.returncode() is None:
            return
        now = time.monotonic()
        if self._redis_retry_at is None:
            if (redis.returncode() or 0) > 0:  # killed by a signal (OOM, kill -9), its log says nothing
                self._show_redis_log()
            ended = describe_exit(redis.returncode())
            self._say(f"redis-server {ended}; restarting it on its append-only file")
        elif now < self._redis_retry_at:
            return
        try:
            redis.start()
        except Exception as exc:  # the port taken meanwhile, a broken file: say it, try again
            self._show_redis_log()
            self._redis_retry_at = now + 5.0
            self._say(f"redis-server did not start again ({exc}); trying again in 5 s")
            return
        self._redis_retry_at = None
        self._say(f"redis-server is back on {redis.url}; workers, web and exporter reconnect by themselves")

    def stop(self) -> float:
        """Stop everything in order (see the module doc); return the seconds it took."""
        began = time.monotonic()
        self.stop_requested.set()
        self._autoscaler_stop.set()
        if self._autoscaler_thread is not None:
            self._autoscaler_thread.join(timeout=30)
        self._say(
            f"stopping: web and beat, workers drain (up to {self._drain()}: running tasks finish or go back"
            " to their queue), then the exporter; redis-server last"
        )
        first = [p for p in self.services if p.name != "exporter"]
        stoppers = [threading.Thread(target=self._stop_service, args=(p,)) for p in first]
        stoppers += [threading.Thread(target=g.stop_all) for g in self.groups.values()]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        for process in [p for p in self.services if p.name == "exporter"]:
            self._stop_service(process, timeout=10)
        if self.redis is not None and self.redis.returncode() is None:
            self.redis.stop()
            self._say(f"redis-server stopped (what is queued stays in {self.redis.data_dir})")
        seconds = time.monotonic() - began
        self._say(f"stopped in {seconds:.1f} s")
        return seconds

    def _stop_service(self, process: ManagedProcess, timeout: float = 30) -> None:
        if process.alive():
            seconds = process.stop(signal.SIGTERM, timeout=timeout)
            self._say(f"{process.name} stopped in {seconds:.1f} s")

    def kill(self) -> None:
        """The second Ctrl-C: no more waiting (redis-server still gets its SIGTERM: it flushes at once)."""
        self.stop_requested.set()
        for process in self.services:
            process.send(signal.SIGKILL)
        for group in self.groups.values():
            for worker in group.workers + group.draining:
                worker.process.send(signal.SIGKILL)
        if self.redis is not None and self.redis.process is not None:
            self.redis.process.terminate()

    # --- what the autoscaler needs (celery_fleet.autoscale.local.ScalableFleet) ---------------
    def scaled_groups(self) -> Sequence[WorkerGroupSpec]:
        return [group.spec for group in self.groups.values()]

    def replicas(self, group: str) -> int:
        return self.groups[group].replicas()

    def scale_up(self, group: str, count: int) -> None:
        if not self.stop_requested.is_set():
            self.groups[group].scale_up(count)

    def scale_down(self, group: str, count: int) -> None:
        if not self.stop_requested.is_set():
            for worker in self.groups[group].scale_down(count, wait=False):
                self._say(f"worker {worker.name} stopping (scale-down): draining for up to {self._drain()}")

    def record_decision(self, group: str, decision: Decision) -> None:
        """One line per scaling step, with its reason; steady decisions stay quiet."""
        if decision.change == 0:
            return
        line = f"{group}: {decision.summary}"
        groups = list(self.groups)
        if group not in self._scaled and groups and group == groups[0]:
            line += f"; --workers {self.config.start_workers} was the starting point"
        self._scaled.add(group)
        self.sink("autoscaler", line)

    def report(self, line: str) -> None:
        self.sink("autoscaler", line)

    # --- output ----------------------------------------------------------------------------
    def _say(self, message: str) -> None:
        self.sink(FLEET, message)

    def _without_chatter(self, name: str, line: str) -> None:
        if line.strip() and not line.startswith(CELERY_CHATTER):
            self.out(name, line)

    def _redis_line(self, name: str, line: str) -> None:
        if self.config.verbose:
            self.sink(name, line)
        else:
            self._redis_log.append(line)

    def _show_redis_log(self) -> None:
        """redis-server's last lines, when it died or would not start (``--verbose`` showed them)."""
        while self._redis_log:
            self.sink("redis", self._redis_log.popleft())

    def _drain(self) -> str:
        return f"{self.config.timings.drain_window} s"

    def print_urls(self) -> None:
        config = self.config
        host = "127.0.0.1" if config.web_host in ("0.0.0.0", "::") else config.web_host
        base = f"http://{host}:{config.web_port}/"
        lines = [f"web:       {base}"]
        # The project's own pages, when it has them (the library knows no project's URLs).
        if _answers(f"{base}api/docs/"):
            lines.append(f"API docs:  {base}api/docs/")
        if _answers(f"{base}admin/login/"):
            hint = config.superuser_hint or "manage.py createsuperuser"
            lines.append(f"admin:     {base}admin/ (an account: {hint})")
        lines += [f"broker:    {self.broker_url}", f"data:      {config.data_dir}"]
        if any(p.name == "exporter" for p in self.services):
            lines.append(f"metrics:   http://{config.exporter_host}:{config.exporter_port}/metrics")
        groups = ", ".join(f"{g.spec.name}={g.replicas()}" for g in self.groups.values())
        scaling = (
            f"autoscale on: 1-{config.max_workers} per queue, --workers {config.start_workers} to start"
            if self.autoscaler
            else "autoscale off"
        )
        lines.append(f"workers:   {groups} ({scaling})")
        lines.append(
            f"Ctrl-C stops the fleet gracefully: workers drain (up to {self._drain()}), redis-server last."
        )
        for line in lines:
            self._say(line)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False
