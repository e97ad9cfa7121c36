"""The job flow against a real PostgreSQL server (the cluster's database) instead of SQLite."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from celery_fleet.local.redis_server import RedisServer
from tests.support.fleet import Fleet, base_env, migrate
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


def _count(postgres: PostgresServer, query: str) -> int:
    """One number from PostgreSQL, asked on a connection of its own."""
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def _sessions(postgres: PostgresServer) -> int:
    """Sessions PostgreSQL has accepted for the database so far (this query's own included)."""
    return _count(postgres, "SELECT sessions FROM pg_stat_database WHERE datname = current_database()")


def _client_backends(postgres: PostgresServer) -> int:
    return _count(
        postgres,
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )


def _posts(url: str, count: int) -> None:
    with httpx.Client(timeout=10) as client:
        for _ in range(count):
            response = client.post(f"{url}/api/jobs/", json={"kind": "export_users"})
            assert response.status_code == 202, response.text


def test_the_web_takes_database_connections_from_a_pool(fleet: Fleet, postgres: PostgresServer) -> None:
    """Under ASGI each request runs in a thread of its own: without the pool every request opens a
    PostgreSQL session (the control), with it the web opens at most the pool's size."""
    unpooled = fleet.start_web(extra_env={"WEB_CONCURRENCY": "1", "DB_POOL": "0"})
    before = _sessions(postgres)
    _posts(unpooled, 30)
    assert _sessions(postgres) - before - 1 >= 30, "the control: one new session per request without the pool"

    pooled = fleet.start_web(extra_env={"WEB_CONCURRENCY": "1", "DB_POOL_MAX_SIZE": "3"})
    before = _sessions(postgres)
    _posts(pooled, 100)
    opened = _sessions(postgres) - before - 1
    assert 1 <= opened <= 3, f"the pooled web opened {opened} sessions for 100 requests (pool size 3)"


def test_long_polls_do_not_hold_database_connections(fleet: Fleet, postgres: PostgresServer) -> None:
    """Twenty long-polls wait on a job no worker runs while the pool has four connections: each
    read gives its connection back, so new jobs are still taken at once and the database sees no
    more sessions than the pool's size."""
    url = fleet.start_web(extra_env={"WEB_CONCURRENCY": "1", "DB_POOL_MAX_SIZE": "4", "DB_POOL_TIMEOUT": "5"})
    job = httpx.post(f"{url}/api/jobs/", json={"kind": "export_users"}, timeout=10).json()
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def long_poll() -> None:
        response = httpx.get(f"{url}/api/jobs/{job['id']}?wait=8", timeout=30)
        with lock:
            answers.append(response)

    polls = [threading.Thread(target=long_poll) for _ in range(20)]
    started = time.monotonic()
    for poll in polls:
        poll.start()
    # POSTs all through the first 5 s of the long-polls' 8 s wait, whenever each poll's reads fall.
    posted = 0
    while time.monotonic() - started < 5 or posted < 5:
        began = time.monotonic()
        _posts(url, 1)
        posted += 1
        assert time.monotonic() - began < 3, "a POST waited for a database connection held by a long-poll"
        time.sleep(0.2)  # pacing between POSTs, not a wait for anything
    assert not answers, "the long-polls answered before their wait was over: nothing was tested"
    assert _client_backends(postgres) <= 4
    for poll in polls:
        poll.join(30)
    assert len(answers) == 20
    assert all(a.status_code == 200 for a in answers)
    assert all(a.json()["state"] == "PENDING" for a in answers)
    assert time.monotonic() - started >= 8


def test_the_api_answers_503_while_the_database_is_down(tmp_path: Path, redis_server: RedisServer) -> None:
    """A stopped PostgreSQL is the server's trouble, not the client's: 503 with Retry-After, in
    the API's JSON, never a 500."""
    server = PostgresServer.start()
    try:
        env = base_env(tmp_path, redis_server.url, server.url)
        migrate(env)
        fleet = Fleet(data_dir=tmp_path, env=env, log_path=tmp_path / "fleet.log")
        url = fleet.start_web(extra_env={"WEB_CONCURRENCY": "1", "DB_POOL_TIMEOUT": "2"})
        made = httpx.post(f"{url}/api/jobs/", json={"kind": "export_users"}, timeout=10)
        assert made.status_code == 202, "the control: the API works while the database is up"
        server.stop()
        for answer in (
            httpx.post(f"{url}/api/jobs/", json={"kind": "export_users"}, timeout=30),
            httpx.get(f"{url}/api/jobs/{made.json()['id']}", timeout=30),
            httpx.get(f"{url}/api/users/", timeout=30),
        ):
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] == "5"
            assert answer.json() == {"error": "the database is unavailable or busy; retry shortly"}
        fleet.stop_all()
    finally:
        server.stop()
