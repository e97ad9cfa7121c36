"""Click options shared by several ``celery-fleet`` subcommands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def probe_dir_option(role: str) -> Callable[[F], F]:
    """``--dir``: the probe folder of a worker or beat (``CELERY_FLEET_PROBE_DIR``)."""
    return click.option(
        "--dir",
        "directory",
        envvar="CELERY_FLEET_PROBE_DIR",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help=f"The {role}'s probe folder (CELERY_FLEET_PROBE_DIR).",
    )
