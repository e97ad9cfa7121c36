"""``celery-fleet manage``: a Django management command on the data `up` uses.

`up` gives its processes an environment of its own making: the SQLite database and the
generated ``SECRET_KEY`` in its data folder, the project's settings module.  A management
command run by hand needs the same, or it fails ("SECRET_KEY must be set") or works on
another database; ``celery-fleet manage createsuperuser`` runs it with exactly that.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from celery_fleet import roles
from celery_fleet.local.fleet import FleetConfig, LocalFleet
from celery_fleet.local.up import secret_key, up
from celery_fleet.project import Project, ProjectError

#: `up`'s own options, so the two commands name the project and its data in the same way.
_SHARED = ("celery_app", "settings_module", "data_dir")


def _manage(celery_app: str, settings_module: str | None, data_dir: Path, args: tuple[str, ...]) -> None:
    try:
        project = Project.named(celery_app, settings_module=settings_module)
    except ProjectError as exc:
        raise click.UsageError(str(exc)) from exc
    if not args:
        raise click.UsageError("name a management command, e.g. `celery-fleet manage createsuperuser`")
    data_dir = data_dir.resolve()
    config = FleetConfig(data_dir=data_dir, project=project, queues=(), secret_key=secret_key(data_dir))
    argv = roles.manage_argv(*args)
    # exec: the command owns the terminal (prompts, Ctrl-C) and its exit status is ours.
    os.execve(argv[0], argv, LocalFleet(config).env())


manage = click.Command(
    "manage",
    callback=_manage,
    params=[
        *(p for p in up.params if p.name in _SHARED),
        click.Argument(["args"], nargs=-1, type=click.UNPROCESSED),
    ],
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    help="Run a Django management command on the data `up` uses (its database, its SECRET_KEY): "
    "`celery-fleet manage createsuperuser`, `... manage shell`, `... manage dbshell`.",
    short_help="A Django management command on the data `up` uses.",
)
