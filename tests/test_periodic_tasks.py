"""The example periodic tasks on a real database (SQLite and PostgreSQL) and real files.

Each runs in a Django process of its own with the fleet's environment, like a worker;
their delivery by beat to the ``periodic`` queue is covered in test_beat_integration.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.fleet import Fleet, base_env, migrate
from tests.support.postgres import PostgresServer, pg_bin

PRELUDE = "import json, django\ndjango.setup()\n"


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    if pg_bin("initdb") is None:
        pytest.skip("PostgreSQL is not installed (make test installs it)")
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Overrides conftest's: every test here runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield None
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    yield server.url
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")


def django(env: dict[str, str], code: str, **extra: str) -> Any:
    """Run ``code`` in a Django process with ``env``; it prints one JSON value last."""
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + code],
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


MAKE_EXPORTS = """
from datetime import timedelta
from django.utils import timezone
from jobs.models import ExportFile, Job
def make(count, hours_old, tag):
    jobs = Job.objects.bulk_create([Job(kind="export_users", params={"tag": tag}) for _ in range(count)])
    files = [ExportFile(job=j, filename=f"{tag}-{i}.csv", content=b"", rows=0) for i, j in enumerate(jobs)]
    ExportFile.objects.bulk_create(files)
    when = timezone.now() - timedelta(hours=hours_old)
    ExportFile.objects.filter(job__params__tag=tag).update(created_at=when)
make(1203, 30, "old")
make(2, 23, "recent")
make(1, 0, "new")
print(json.dumps(ExportFile.objects.count()))
"""

CLEANUP = """
from jobs.models import ExportFile, Job
from jobs.tasks import cleanup_exports
first, second = cleanup_exports(), cleanup_exports()
left = sorted({f.rsplit("-", 1)[0] for f in ExportFile.objects.values_list("filename", flat=True)})
print(json.dumps({"first": first, "second": second, "left": left, "jobs": Job.objects.count()}))
"""


def test_cleanup_exports_removes_only_reports_older_than_the_configured_age(fleet: Fleet) -> None:
    assert django(fleet.env, MAKE_EXPORTS) == 1206

    result = django(fleet.env, CLEANUP, EXPORT_MAX_AGE_HOURS="24")

    # Past the 500-row batches, every old report goes; a second run finds nothing: idempotent.
    assert result == {"first": 1203, "second": 0, "left": ["new", "recent"], "jobs": 1206}
    # A shorter age, from the environment, takes the recent ones as well.
    shorter = django(fleet.env, CLEANUP, EXPORT_MAX_AGE_HOURS="12")
    assert shorter == {"first": 2, "second": 0, "left": ["new"], "jobs": 1206}


BACKUP_TWICE = """
from django.contrib.auth.models import User
from jobs.tasks import backup_database
User.objects.create_user(username="backed-up-alice", email="alice@example.com")
User.objects.create_user(username="backed-up-bob", email="bob@example.com")
print(json.dumps([backup_database(), backup_database()]))
"""


def _old_backups(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    old = [folder / f"backup-20200101-{hour:02d}.json.gz" for hour in range(5)]
    for path in old:
        with gzip.open(path, "wt") as fh:
            fh.write("[]")
    return old


def test_backup_database_writes_one_restorable_dump_per_hour_and_keeps_the_last_few(
    fleet: Fleet, tmp_path: Path, database_url: str | None
) -> None:
    folder = tmp_path / "backups"
    old = _old_backups(folder)
    stale_tmp, running_tmp = (
        folder / ".backup-20200101-05.json.gz.dead1234.tmp",
        folder / ".backup-x.live5678.tmp",
    )
    stale_tmp.write_text("half a dump")
    os.utime(stale_tmp, (time.time() - 7200, time.time() - 7200))
    running_tmp.write_text("another run's dump in progress")

    first, second = django(fleet.env, BACKUP_TWICE, BACKUP_DIR=str(folder), BACKUP_KEEP="3")

    made = {Path(first), Path(second)}
    assert all(
        p.parent == folder and p.name.startswith("backup-") and p.name.endswith(".json.gz") for p in made
    )
    # Idempotent: a rerun in the same hour replaced the file (two only across an hour boundary).
    backups = sorted(folder.glob("backup-*.json.gz"))
    assert backups == sorted(made | set(old[-(3 - len(made)) :])), backups
    assert not stale_tmp.exists(), "a dump killed long ago left its temporary file"
    assert running_tmp.exists(), "a dump that may still be running lost its temporary file"
    assert [p.name for p in folder.glob(".*.tmp")] == [running_tmp.name]

    with gzip.open(Path(second), "rt", encoding="utf-8") as fh:
        dump = json.load(fh)
    usernames = {row["fields"]["username"] for row in dump if row["model"] == "auth.user"}
    assert {"backed-up-alice", "backed-up-bob"} <= usernames

    # Restorable: loaddata into an empty database brings the users back.
    restored = tmp_path / "restored"
    restored.mkdir()
    env = base_env(restored, fleet.env["CELERY_BROKER_URL"])
    migrate(env)
    loaded = subprocess.run(
        [sys.executable, "-m", "django", "loaddata", second],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert loaded.returncode == 0, loaded.stderr[-4000:]
    names = django(
        env,
        "from django.contrib.auth.models import User\n"
        "print(json.dumps(sorted(User.objects.values_list('username', flat=True))))",
    )
    assert {"backed-up-alice", "backed-up-bob"} <= set(names)


def test_backup_database_fails_clearly_and_leaves_nothing_behind_when_the_folder_is_unusable(
    fleet: Fleet, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the backup folder should be")
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + "from jobs.tasks import backup_database\nbackup_database()"],
        env={**fleet.env, "BACKUP_DIR": str(blocker / "backups")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode != 0
    assert "not-a-folder" in done.stderr
    assert blocker.read_text() == "a file where the backup folder should be"
