"""The beat lock against real Redis, and the beat probe's reading of its heartbeat file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery import Celery
from click.testing import CliRunner
from redbeat.schedulers import RedBeatConfig

from celery_fleet.beat import (
    ACTIVE,
    HEARTBEAT_FILE,
    STANDBY,
    BeatLock,
    LockGuard,
    adopt_namespaced_redbeat_settings,
    beat_probe_status,
    loop_interval,
    probe_beat,
    write_heartbeat,
)
from celery_fleet.local.waiting import free_port, wait_until
from tests.support.fleet import EXAMPLE_DIR

KEY = "redbeat::lock"


def test_only_one_beat_holds_the_lock(redis_client: redis.Redis) -> None:
    first, second = BeatLock(redis_client, KEY, 30, "a"), BeatLock(redis_client, KEY, 30, "b")
    assert first.hold()
    assert not second.hold()
    assert second.holder() == first.token
    assert first.token.startswith("a/")
    assert first.hold(), "the holder refreshes its own lock"
    assert not second.hold()


def test_holding_refreshes_the_ttl_to_the_full_timeout(redis_client: redis.Redis) -> None:
    lock = BeatLock(redis_client, KEY, 20, "a")
    assert lock.hold()
    redis_client.pexpire(KEY, 500)
    assert lock.hold()
    assert int(redis_client.pttl(KEY)) > 15_000


def test_an_expired_lock_goes_to_the_standby_and_the_old_holder_stops(redis_client: redis.Redis) -> None:
    first, second = BeatLock(redis_client, KEY, 0.3, "a"), BeatLock(redis_client, KEY, 0.3, "b")
    assert first.hold()
    wait_until(second.hold, timeout=10, interval=0.05, what="the standby to take the expired lock")
    assert not first.hold(), "a beat whose lock expired must not go on sending"
    assert not first.held
    assert not first.release(), "releasing must not free another beat's lock"
    assert second.holder() == second.token


def test_release_hands_over_at_once(redis_client: redis.Redis) -> None:
    first, second = BeatLock(redis_client, KEY, 60, "a"), BeatLock(redis_client, KEY, 60, "b")
    assert first.hold()
    assert first.release()
    assert second.hold()
    assert not first.release()


def test_a_plain_redbeat_lock_excludes_the_beat_lock_too(redis_client: redis.Redis) -> None:
    """Same key and protocol as redbeat: a plain redbeat beat and a locked one never both send."""
    plain = redis_client.lock(KEY, timeout=30)
    assert plain.acquire(blocking=False)
    assert not BeatLock(redis_client, KEY, 30, "a").hold()
    plain.release()
    assert BeatLock(redis_client, KEY, 30, "a").hold()


def test_lock_timeout_must_be_positive(redis_client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="positive"):
        BeatLock(redis_client, KEY, 0)


@pytest.mark.parametrize(
    ("max_interval", "lock_timeout", "expected"),
    [(300, 60, 15.0), (5, 60, 5.0), (300, 5, 1.25), (300, 1, 0.5)],
)
def test_the_loop_interval_keeps_the_lock_fresh(
    max_interval: float, lock_timeout: float, expected: float
) -> None:
    assert loop_interval(max_interval, lock_timeout) == expected


def test_guard_writes_heartbeats_for_active_and_standby(redis_client: redis.Redis, tmp_path: Path) -> None:
    active = LockGuard(BeatLock(redis_client, KEY, 30, "a"), 2.0, tmp_path / "a")
    standby = LockGuard(BeatLock(redis_client, KEY, 30, "b"), 2.0, tmp_path / "b")
    assert active.may_send()
    assert not standby.may_send()
    a = json.loads((tmp_path / "a" / HEARTBEAT_FILE).read_text())
    b = json.loads((tmp_path / "b" / HEARTBEAT_FILE).read_text())
    assert (a["state"], b["state"]) == (ACTIVE, STANDBY)
    assert b["holder"] == active.lock.token
    assert beat_probe_status(tmp_path / "a", active=True)[0]
    ok, message = beat_probe_status(tmp_path / "b", active=True)
    assert not ok
    assert active.lock.token in message
    active.release()
    assert standby.may_send()


def test_guard_sends_nothing_while_redis_is_unreachable(tmp_path: Path) -> None:
    client = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    guard = LockGuard(BeatLock(client, KEY, 30, "a"), 2.0, tmp_path)
    assert not guard.may_send()
    assert guard.state == STANDBY
    assert beat_probe_status(tmp_path)[0], "the loop still ticks: alive, just not sending"


def _heartbeat(directory: Path, *, age: float, state: str = ACTIVE, interval: float = 15.0) -> None:
    write_heartbeat(directory, state=state, interval=interval, lock_key=KEY, holder="x")
    path = directory / HEARTBEAT_FILE
    record = json.loads(path.read_text())
    record["ts"] = time.time() - age
    path.write_text(json.dumps(record))


def test_probe_allows_three_loop_intervals_and_at_least_thirty_seconds(tmp_path: Path) -> None:
    _heartbeat(tmp_path, age=40, interval=15)
    assert beat_probe_status(tmp_path)[0]
    _heartbeat(tmp_path, age=50, interval=15)
    ok, message = beat_probe_status(tmp_path)
    assert not ok
    assert "stuck" in message
    _heartbeat(tmp_path, age=25, interval=1)
    assert beat_probe_status(tmp_path)[0]
    assert not beat_probe_status(tmp_path, max_age=10)[0]


def test_probe_fails_clearly_without_a_readable_heartbeat(tmp_path: Path) -> None:
    ok, message = beat_probe_status(tmp_path)
    assert not ok
    assert "no beat heartbeat" in message
    (tmp_path / HEARTBEAT_FILE).write_text("{not json")
    ok, message = beat_probe_status(tmp_path)
    assert not ok
    assert "unreadable" in message


def test_probe_beat_command_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    _heartbeat(tmp_path, age=1, state=STANDBY)
    assert runner.invoke(probe_beat, ["--dir", str(tmp_path)]).exit_code == 0
    result = runner.invoke(probe_beat, ["--dir", str(tmp_path), "--active"])
    assert result.exit_code == 1
    assert "standby" in result.output
    result = runner.invoke(probe_beat, ["--dir", str(tmp_path / "missing")])
    assert result.exit_code == 1
    result = runner.invoke(probe_beat, [], env={"CELERY_FLEET_PROBE_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output


def test_settings_default_to_the_locked_redbeat_scheduler(tmp_path: Path) -> None:
    """Plain redbeat dies at its first long sleep with the default 60 s lock (see docs/beat.md)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))}
    env.update(DJANGO_SETTINGS_MODULE="fleetsite.settings", SECRET_KEY="x", PYTHONPATH=str(EXAMPLE_DIR))
    env["CELERY_FLEET_DATA_DIR"] = str(tmp_path)
    code = "from django.conf import settings; print(settings.CELERY_BEAT_SCHEDULER)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "celery_fleet.beat.LockedRedBeatScheduler"


def _namespaced_app(**settings: Any) -> Celery:
    app = Celery("beat-settings", set_as_current=False)
    app.config_from_object(
        SimpleNamespace(CELERY_BROKER_URL="redis://127.0.0.1:1/0", **settings), namespace="CELERY"
    )
    return app


def test_redbeat_sees_namespaced_django_settings_once_adopted() -> None:
    settings = {
        "CELERY_REDBEAT_REDIS_URL": "redis://beat-redis:6379/3",
        "CELERY_REDBEAT_REDIS_OPTIONS": {"db": 3},
    }
    # redbeat alone: warns that the URL is unset and would drop the options.
    with pytest.warns(DeprecationWarning, match="RedBeat will stop falling back") as record:
        RedBeatConfig(_namespaced_app(**settings))
    messages = " ".join(str(warning.message) for warning in record)
    assert "set redbeat_redis_url explicitly" in messages
    assert "set redbeat_redis_options explicitly" in messages
    app = _namespaced_app(**settings)
    adopt_namespaced_redbeat_settings(app)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        conf = RedBeatConfig(app)
    assert conf.redis_url == "redis://beat-redis:6379/3"
    assert conf.is_key_in_conf("redbeat_redis_options")
    assert conf.redbeat_redis_options == {"db": 3}
