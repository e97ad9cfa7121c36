"""Environment parsing and the timing contract (pure logic)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from celery_fleet.env import EnvReader
from celery_fleet.presets import safe_delivery_settings
from celery_fleet.timings import Timings, TimingsError
from tests.support.fleet import EXAMPLE_DIR


def test_values_come_from_the_variable_or_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    env = EnvReader({"A": "1", "B_FILE": str(secret), "FLAG": "yes", "LIST": "a, b,,c"})
    assert env.int("A", 0) == 1
    assert env.str("B") == "s3cret"
    assert env.bool("FLAG") is True
    assert env.list("LIST") == ["a", "b", "c"]
    assert env.int("MISSING", 7) == 7


@pytest.mark.parametrize(
    ("environ", "call", "message"),
    [
        ({"N": "abc"}, lambda e: e.int("N", 0), "N='abc' is not a whole number"),
        ({"N": "0"}, lambda e: e.int("N", 1, minimum=1), "N=0 must be at least 1"),
        ({"F": "maybe"}, lambda e: e.bool("F"), "F='maybe' is not a boolean"),
        ({"X": "1", "X_FILE": "/x"}, lambda e: e.str("X"), "both set"),
        (
            {"X_FILE": "/nonexistent/secret"},
            lambda e: e.str("X"),
            "X_FILE='/nonexistent/secret' cannot be read",
        ),
        ({}, lambda e: e.required_str("SECRET_KEY"), "SECRET_KEY (or SECRET_KEY_FILE) must be set"),
        ({"M": "fast"}, lambda e: e.choice("M", "a", ("a", "b")), "M='fast' must be one of a, b"),
    ],
)
def test_bad_values_name_the_variable(environ: dict[str, str], call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ImproperlyConfigured) as excinfo:
        call(EnvReader(environ))
    assert message in str(excinfo.value)


def test_derived_timings_are_consistent() -> None:
    timings = Timings(soft_time_limit=50, time_limit=60, drain_window=20).validated()
    assert timings.effective_grace_period == 30
    assert timings.effective_visibility_timeout == 90
    assert timings.redelivery_delay == 95


@pytest.mark.parametrize(
    ("timings", "fragment"),
    [
        (Timings(soft_time_limit=60, time_limit=60), "soft_time_limit (60s) must be below time_limit"),
        (
            Timings(drain_window=30, grace_period=35),
            "grace_period (35s) must be at least drain_window (30s) + 10s",
        ),
        (
            Timings(time_limit=300, visibility_timeout=300),
            "visibility_timeout (300s) must be at least time_limit",
        ),
    ],
)
def test_inconsistent_timings_are_refused(timings: Timings, fragment: str) -> None:
    with pytest.raises(TimingsError) as excinfo:
        timings.validated()
    assert fragment in str(excinfo.value)


def test_presets_carry_the_safe_delivery_settings() -> None:
    settings = safe_delivery_settings("redis://localhost:6379/0", Timings(soft_time_limit=50, time_limit=60))
    assert settings["CELERY_TASK_ACKS_LATE"] is True
    assert settings["CELERY_TASK_REJECT_ON_WORKER_LOST"] is True
    assert settings["CELERY_WORKER_PREFETCH_MULTIPLIER"] == 1
    assert settings["CELERY_ACCEPT_CONTENT"] == ["json"]
    assert settings["CELERY_BROKER_TRANSPORT_OPTIONS"]["visibility_timeout"] == 90
    # Redis: the reliable transport (atomic pop, dead letters) where kombu lets us pick one.
    assert settings["CELERY_BROKER_TRANSPORT"] == "celery_fleet.transport:Transport"
    for url in ("redis+socket:///run/redis.sock", "sentinel://localhost:26379"):
        assert safe_delivery_settings(url, Timings())["CELERY_BROKER_TRANSPORT"] is None
    # RabbitMQ: quorum queues and publisher confirms, no Redis options.
    amqp = safe_delivery_settings("amqp://guest@localhost//", Timings())
    assert amqp["CELERY_BROKER_TRANSPORT"] is None
    assert amqp["CELERY_BROKER_TRANSPORT_OPTIONS"]["confirm_publish"] is True
    assert "visibility_timeout" not in amqp["CELERY_BROKER_TRANSPORT_OPTIONS"]
    assert amqp["CELERY_TASK_DEFAULT_QUEUE_TYPE"] == amqp["CELERY_TASK_CREATE_MISSING_QUEUE_TYPE"] == "quorum"
    assert "CELERY_TASK_DEFAULT_QUEUE_TYPE" not in settings


def test_under_the_presets_threads_share_one_result_backend() -> None:
    """Under ASGI every request publishes from a thread of its own: with Celery's default each
    would build a result backend of its own (a dozen settings lookups per request)."""
    import threading

    from celery import Celery

    def backends_of_two_threads(**settings: object) -> set[int]:
        app = Celery("backend-sharing", set_as_current=False)
        app.conf.update({k.removeprefix("CELERY_").lower(): v for k, v in settings.items()})
        seen: set[int] = set()
        threads = [threading.Thread(target=lambda: seen.add(id(app.backend))) for _ in range(2)]
        for thread in threads:
            thread.start()
            thread.join()
        return seen

    presets = safe_delivery_settings("redis://localhost:6379/0", Timings())
    assert len(backends_of_two_threads(**presets)) == 1
    assert len(backends_of_two_threads()) == 2, "the control: Celery's default builds one per thread"


def _settings_error(**environ: str) -> str:
    code = "import django; django.setup()"
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "fleetsite.settings",
        "PYTHONPATH": str(EXAMPLE_DIR),
        **environ,
    }
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    return result.stderr


def test_django_settings_refuse_bad_environment() -> None:
    assert "SECRET_KEY (or SECRET_KEY_FILE) must be set" in _settings_error()
    assert "CELERY_TASK_TIME_LIMIT='soon' is not a whole number" in _settings_error(
        SECRET_KEY="x", CELERY_TASK_TIME_LIMIT="soon"
    )
    assert "soft_time_limit (300s) must be below time_limit (300s)" in _settings_error(
        SECRET_KEY="x", CELERY_TASK_SOFT_TIME_LIMIT="300", CELERY_TASK_TIME_LIMIT="300"
    )
    assert "DATABASE_URL" in _settings_error(SECRET_KEY="x", DATABASE_URL="nosuchdb://x")
    postgres = {"SECRET_KEY": "x", "DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db", "DB_POOL": "1"}
    assert "DB_POOL_MAX_SIZE='many' is not a whole number" in _settings_error(
        **postgres, DB_POOL_MAX_SIZE="many"
    )
    assert "DB_POOL_MIN_SIZE must not be larger than DB_POOL_MAX_SIZE" in _settings_error(
        **postgres, DB_POOL_MIN_SIZE="5", DB_POOL_MAX_SIZE="2"
    )


def test_cli_timings_refuses_inconsistent_values() -> None:
    from click.testing import CliRunner

    from celery_fleet.cli import main

    result = CliRunner().invoke(main, ["timings", "--drain-window", "40", "--grace-period", "30"])
    assert result.exit_code == 2
    assert "grace_period (30s) must be at least drain_window (40s) + 10s" in result.output
    ok = CliRunner().invoke(main, ["timings", "--drain-window", "40"])
    assert ok.exit_code == 0
    assert '"grace_period": 50' in ok.output
