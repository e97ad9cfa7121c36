"""The project's settings unchanged, with a URLconf that adds the bench's baseline views.

``BENCH_SQLITE_CONN_MAX_AGE`` (set by ``bench/web.py --sqlite-conn-max-age``) is a what-if
knob: the project closes SQLite connections after every request (``CONN_MAX_AGE = 0``);
this shows what keeping them open would buy.  Unset, nothing differs from the project.
"""

import os

from fleetsite.settings import *  # noqa: F403
from fleetsite.settings import DATABASES

ROOT_URLCONF = "benchsite.urls"

if os.environ.get("BENCH_SQLITE_CONN_MAX_AGE") and DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ["BENCH_SQLITE_CONN_MAX_AGE"])
