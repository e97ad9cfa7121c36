"""The command lines and environments of the fleet's roles, shared by ``celery-fleet up``,
the tests and the container image, so each runs the same way everywhere.  The project is
always the user's (:class:`celery_fleet.project.Project`); nothing here names one."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

#: gunicorn's configuration for any project (``celery_fleet/gunicorn_conf.py``).
GUNICORN_CONFIG = "python:celery_fleet.gunicorn_conf"


def worker_env(base: Mapping[str, str], probe_dir: Path | None = None) -> dict[str, str]:
    env = dict(base)
    # SIGTERM starts Celery's soft shutdown (drain window, then requeue) instead of an
    # unbounded warm shutdown that a pod's grace period would cut short with SIGKILL.
    env["REMAP_SIGTERM"] = "SIGQUIT"
    if probe_dir is not None:
        env["CELERY_FLEET_PROBE_DIR"] = str(probe_dir)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def worker_argv(
    queues: Sequence[str],
    *,
    app: str,
    hostname: str,
    concurrency: int = 1,
    loglevel: str = "INFO",
    pool: str = "prefork",
    quiet: bool = False,
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        *_quiet(quiet),
        "-A",
        app,
        "worker",
        "--queues",
        ",".join(queues),
        "--hostname",
        hostname,
        "--concurrency",
        str(concurrency),
        "--pool",
        pool,
        "--loglevel",
        loglevel,
        # Gossip and mingle chatter grows with the fleet and buys nothing here.
        "--without-gossip",
        "--without-mingle",
    ]


def beat_argv(
    *, app: str, loglevel: str = "INFO", schedule_file: Path | None = None, quiet: bool = False
) -> list[str]:
    argv = [sys.executable, "-m", "celery", *_quiet(quiet), "-A", app, "beat", "--loglevel", loglevel]
    if schedule_file is not None:
        argv += ["--schedule", str(schedule_file)]
    return argv


def _quiet(quiet: bool) -> list[str]:
    # Celery's start-up banner (some 30 lines per process) off; its log lines stay.
    return ["--quiet"] if quiet else []


def web_argv(asgi_application: str, config: str = GUNICORN_CONFIG) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--config", config, asgi_application]


def manage_argv(*args: str) -> list[str]:
    """``django-admin`` for the project in ``DJANGO_SETTINGS_MODULE`` (no manage.py needed)."""
    return [sys.executable, "-m", "django", *args]
