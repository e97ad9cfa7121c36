from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from celery_fleet.local.redis_server import RedisServer
from celery_fleet.local.waiting import free_port
from tests.support.fleet import Fleet, base_env, migrate

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleetsite.settings")
os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production")
# Settings loaded inside the test process itself (Django test client, mypy) use a scratch database.
os.environ.setdefault("DATABASE_URL", f"sqlite:///{tempfile.mkdtemp(prefix='fleet-tests-')}/db.sqlite3")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(data_dir=tmp_path_factory.mktemp("redis"), port=free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def database_url() -> str | None:
    """SQLite in the test's folder by default; a module overrides this to use PostgreSQL."""
    return None


@pytest.fixture
def fleet(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis, database_url: str | None
) -> Iterator[Fleet]:
    """Migrated database + a clean Redis; start workers and web with its methods."""
    env = base_env(tmp_path, redis_server.url, database_url)
    migrate(env)
    running = Fleet(data_dir=tmp_path, env=env, log_path=tmp_path / "fleet.log")
    yield running
    running.stop_all()
    print(running.logs()[-8000:])
