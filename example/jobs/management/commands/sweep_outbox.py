"""``python -m django sweep_outbox [--every SECONDS]``: the outbox sweep, once or in a loop.

Beat runs the same sweep as the periodic task ``jobs.tasks.sweep_outbox``; this command is
for a one-off after an incident, and for running it beside a fleet without beat.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from jobs.services import sweep_outbox


class Command(BaseCommand):
    help = "Publish again the unfinished jobs whose message the broker lost."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--every", type=float, default=0.0, help="Repeat every this many seconds (0: sweep once)."
        )

    def handle(self, *args: Any, every: float, **options: Any) -> None:
        while True:
            try:
                republished = sweep_outbox()
            except Exception as exc:  # a broker or database outage: try again next round
                if not every:
                    raise
                where = traceback.extract_tb(exc.__traceback__)[-3:]
                self.stderr.write(
                    f"sweep failed: {type(exc).__name__}: {exc} (at "
                    + " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(where))
                    + ")"
                )
            else:
                if republished or not every:
                    self.stdout.write(f"republished {republished} job(s)")
            if not every:
                return
            time.sleep(every)
