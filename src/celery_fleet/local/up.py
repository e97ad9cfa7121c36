"""``celery-fleet up``: the whole fleet on this machine as real processes."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import click

from celery_fleet.local.fleet import FleetConfig, FleetError, LocalFleet
from celery_fleet.local.redis_server import INSTALL_HINT, redis_server_binary
from celery_fleet.project import Project, ProjectError
from celery_fleet.timings import Timings, TimingsError


def secret_key(data_dir: Path) -> str:
    """SECRET_KEY from the environment, else one generated once and kept in the data folder."""
    if os.environ.get("SECRET_KEY") or os.environ.get("SECRET_KEY_FILE"):
        return os.environ.get("SECRET_KEY", "")
    path = data_dir / "secret_key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50), encoding="ascii")
        path.chmod(0o600)
    return path.read_text(encoding="ascii").strip()


def _declared_queues(project: Project, env: dict[str, str]) -> tuple[str, ...]:
    """Ask the project's Celery app which queues it sends to (in a child: its settings stay out of here)."""
    argv = [sys.executable, "-m", "celery_fleet.cli", "queues", "--app", project.celery_app, "--json"]
    # Its own session, as every child of `up`: a Ctrl-C meanwhile is for `up` to handle.
    found = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, start_new_session=True)
    if found.returncode != 0:
        raise click.ClickException(
            f"could not read the queues of {project.celery_app!r}: {found.stderr.strip().splitlines()[-1:]}"
            " (name them with --queues)"
        )
    return tuple(json.loads(found.stdout))


def _queue_list(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(dict.fromkeys(q.strip() for q in value.split(",") if q.strip()))
    if not names:
        raise click.BadParameter("give at least one queue name, e.g. default,exports", param_hint="--queues")
    return names


@click.command()
@click.option(
    "--app",
    "-A",
    "celery_app",
    envvar="CELERY_FLEET_APP",
    required=True,
    help="Your project's Celery app, as `celery -A` takes it (CELERY_FLEET_APP). "
    "Run from your project's folder, or put it on PYTHONPATH.",
)
@click.option(
    "--asgi",
    "asgi_application",
    envvar="CELERY_FLEET_ASGI",
    default=None,
    help="module:attribute of the ASGI application (CELERY_FLEET_ASGI) [default: APP.asgi:application].",
)
@click.option(
    "--settings",
    "settings_module",
    envvar="DJANGO_SETTINGS_MODULE",
    default=None,
    help="Django settings module (DJANGO_SETTINGS_MODULE) [default: APP.settings].",
)
@click.option(
    "--queues",
    envvar="CELERY_FLEET_QUEUES",
    default=None,
    help="Comma-separated queues, one worker group each, the first for user jobs (CELERY_FLEET_QUEUES) "
    "[default: the queues the app declares].",
)
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Web tier's port."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the web tier listens on.")
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(0, 64),
    help="Workers the first queue (user jobs) starts with; the other queues start with one each. "
    "With --autoscale this is the starting point: the autoscaler takes over (and says so).",
)
@click.option(
    "--max-workers",
    default=4,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Upper bound per queue when autoscaling.",
)
@click.option(
    "--concurrency",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Pool processes per worker.",
)
@click.option(
    "--autoscale/--no-autoscale",
    default=True,
    show_default=True,
    help="Run the autoscaling policy against the local workers.",
)
@click.option(
    "--autoscale-interval",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0.1, 300),
    help="Seconds between two autoscaler steps.",
)
@click.option(
    "--exporter-port",
    default=9808,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Metrics exporter's port (0: no exporter).",
)
@click.option(
    "--exporter-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics exporter listens on (0.0.0.0 for a Prometheus on another machine).",
)
@click.option("--beat/--no-beat", default=True, show_default=True, help="Run one beat scheduler.")
@click.option(
    "--broker-url",
    envvar="CELERY_BROKER_URL",
    default=None,
    help="Use this broker instead of starting a local redis-server.",
)
@click.option(
    "--redis-port",
    default=6390,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Port of the local redis-server (not used with --broker-url).",
)
@click.option(
    "--data-dir",
    envvar="CELERY_FLEET_DATA_DIR",
    default=".fleet",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="SQLite database, broker append-only file, probe files, backups.",
)
@click.option(
    "--drain-window",
    envvar="CELERY_FLEET_DRAIN_WINDOW",
    default=30,
    show_default=True,
    type=int,
    help="Seconds a stopping worker lets running tasks finish before requeuing them.",
)
@click.option("--time-limit", envvar="CELERY_TASK_TIME_LIMIT", default=300, show_default=True, type=int)
@click.option(
    "--soft-time-limit", envvar="CELERY_TASK_SOFT_TIME_LIMIT", default=240, show_default=True, type=int
)
@click.option("--loglevel", default="INFO", show_default=True, help="Log level of workers and beat.")
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Everything each process prints: Celery's banners and root warning, redis-server's notices, "
    "every migration.",
)
def up(
    celery_app: str,
    asgi_application: str | None,
    settings_module: str | None,
    queues: str | None,
    port: int,
    host: str,
    workers: int,
    max_workers: int,
    concurrency: int,
    autoscale: bool,
    autoscale_interval: float,
    exporter_port: int,
    exporter_host: str,
    beat: bool,
    broker_url: str | None,
    redis_port: int,
    data_dir: Path,
    drain_window: int,
    time_limit: int,
    soft_time_limit: int,
    loglevel: str,
    verbose: bool,
) -> None:
    """Start broker, migrations, web, workers, exporter, beat and autoscaler; Ctrl-C stops them gracefully."""
    timings = Timings(soft_time_limit=soft_time_limit, time_limit=time_limit, drain_window=drain_window)
    try:
        timings.validated()
    except TimingsError as exc:
        raise click.UsageError(str(exc)) from exc
    if broker_url is None:
        try:
            redis_server_binary()
        except FileNotFoundError:
            raise click.ClickException(INSTALL_HINT) from None
    try:
        project = Project.named(
            celery_app, asgi_application=asgi_application, settings_module=settings_module
        )
    except ProjectError as exc:
        raise click.UsageError(str(exc)) from exc
    queue_names = _queue_list(queues)
    data_dir = data_dir.resolve()
    config = FleetConfig(
        data_dir=data_dir,
        project=project,
        queues=queue_names or (),
        web_host=host,
        web_port=port,
        start_workers=workers,
        max_workers=max_workers,
        concurrency=concurrency,
        autoscale=autoscale,
        autoscale_interval=autoscale_interval,
        exporter_host=exporter_host,
        exporter_port=exporter_port,
        beat=beat,
        broker_url=broker_url,
        redis_port=redis_port,
        timings=timings,
        loglevel=loglevel,
        verbose=verbose,
        superuser_hint=os.environ.get("CELERY_FLEET_SUPERUSER_HINT")
        or f"`celery-fleet manage --app {project.celery_app} --data-dir {data_dir} createsuperuser`",
    )
    fleet = LocalFleet(config)

    def request_stop(signum: int, frame: object) -> None:
        if fleet.stop_requested.is_set():
            click.echo("celery-fleet: second signal, stopping now", err=True)
            fleet.kill()
            sys.exit(1)
        fleet.stop_requested.set()

    # Ctrl-C (the terminal sends SIGINT to the whole foreground process group: every child
    # runs in a session of its own and never sees it) or SIGTERM: the graceful stop.
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        fleet.check_ports()  # before anything starts, before the slow look at the app's queues
        config.secret_key = secret_key(data_dir)
        if not config.queues:
            config.queues = _declared_queues(project, fleet.env())
        try:
            fleet.start()
            if not fleet.stop_requested.is_set():
                fleet.print_urls()
            while not fleet.stop_requested.wait(1.0):
                fleet.check()
        finally:
            fleet.stop()
    except FleetError as exc:
        raise click.ClickException(str(exc)) from None
