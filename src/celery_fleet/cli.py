"""The ``celery-fleet`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from celery_fleet import __version__
from celery_fleet.cli_options import probe_dir_option
from celery_fleet.lifecycle import probe_status
from celery_fleet.timings import Timings, TimingsError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "CELERY_FLEET"})
@click.version_option(__version__, prog_name="celery-fleet")
def main() -> None:
    """Run, measure and scale a Celery worker fleet for Django."""


@main.command()
@click.argument("check", type=click.Choice(["live", "ready"]))
@probe_dir_option("worker")
@click.option("--max-age", default=20.0, show_default=True, help="Oldest acceptable heartbeat, in seconds.")
def probe(check: str, directory: Path, max_age: float) -> None:
    """Worker probe for Kubernetes exec probes: exit 0 if live/ready, 1 otherwise (no broker round trip)."""
    ok, message = probe_status(directory, check=check, max_age=max_age)
    click.echo(message)
    sys.exit(0 if ok else 1)


@main.command()
@click.option("--soft-time-limit", type=int, default=240, show_default=True)
@click.option("--time-limit", type=int, default=300, show_default=True)
@click.option("--drain-window", type=int, default=30, show_default=True)
@click.option("--grace-period", type=int, default=None, help="Default: drain window + margin.")
@click.option("--visibility-timeout", type=int, default=None, help="Default: time limit + margin.")
def timings(
    soft_time_limit: int,
    time_limit: int,
    drain_window: int,
    grace_period: int | None,
    visibility_timeout: int | None,
) -> None:
    """Check a set of worker timings and print the derived ones as JSON."""
    value = Timings(soft_time_limit, time_limit, drain_window, grace_period, visibility_timeout)
    try:
        value.validated()
    except TimingsError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(json.dumps(value.as_dict(), indent=2))


@main.command()
@click.option(
    "--app",
    "-A",
    "celery_app",
    envvar="CELERY_FLEET_APP",
    required=True,
    help="The Celery app, as `celery -A` takes it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of one name per line.")
def queues(celery_app: str, as_json: bool) -> None:
    """Print the queues the project's Celery app declares (what `up` and the exporter serve by default)."""
    from celery_fleet.project import declared_queues, load_celery_app

    try:
        names = declared_queues(load_celery_app(celery_app))
    except Exception as exc:  # an import error, bad settings, a wrong name: all the user's to fix
        raise click.UsageError(
            f"cannot load the Celery app {celery_app!r}: {type(exc).__name__}: {exc}"
        ) from exc
    click.echo(json.dumps(names) if as_json else "\n".join(names))


def _register_optional_commands() -> None:
    """Subcommands living in their own modules (each module owns its options)."""
    from celery_fleet.autoscale.deletion_cost import deletion_cost_command
    from celery_fleet.autoscale.simulate.command import simulate_command
    from celery_fleet.beat import probe_beat
    from celery_fleet.dead_letter import dead_letter_command
    from celery_fleet.exporter.cli import exporter
    from celery_fleet.local.manage import manage
    from celery_fleet.local.up import up

    main.add_command(up)
    main.add_command(manage)
    main.add_command(simulate_command, name="simulate")
    main.add_command(deletion_cost_command, name="deletion-cost")
    main.add_command(exporter)
    main.add_command(probe_beat)
    main.add_command(dead_letter_command)


_register_optional_commands()


if __name__ == "__main__":
    main()
