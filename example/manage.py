#!/usr/bin/env python
"""The example project's manage.py: ``python example/manage.py createsuperuser`` from anywhere."""

import os
import sys
from pathlib import Path


def main() -> None:
    # The project folder (this file's) first on the path, as Django's own manage.py has it.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleetsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
