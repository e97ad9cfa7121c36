"""The job flow against a real PostgreSQL server (the cluster's database) instead of SQLite."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.support.postgres import PostgresServer, pg_bin

# The same end-to-end tests as on SQLite, collected again here with the PostgreSQL database.
from tests.test_jobs_integration import (  # noqa: F401
    test_export_job_offers_a_csv_with_every_user,
    test_failing_job_reports_error_and_runs_error_callback,
    test_random_users_job_runs_on_a_worker_with_progress_and_callback,
    test_unknown_job_is_404_and_health_endpoints_touch_dependencies,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        pg_bin("initdb") is None, reason="PostgreSQL is not installed (make test installs it)"
    ),
]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture
def database_url(postgres: PostgresServer) -> Iterator[str]:
    yield postgres.url
    # Each test gets empty tables: drop everything the migrations made.
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
