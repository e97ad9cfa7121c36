"""Graceful shutdown with real worker processes and a real Redis: nothing lost, nothing doubled."""

from __future__ import annotations

import signal
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from celery_fleet.lifecycle import READY_FILE
from celery_fleet.local.waiting import wait_until
from celery_fleet.transport import DEAD_LETTER_KEY
from tests.support.fleet import Fleet
from tests.support.ledger import enqueue_timed_work, read_runs, send_tasks

# Short limits so the suite runs in seconds; the same rules as production (celery_fleet.timings).
TIMINGS_ENV = {
    "CELERY_TASK_SOFT_TIME_LIMIT": "50",
    "CELERY_TASK_TIME_LIMIT": "60",
    "CELERY_FLEET_DRAIN_WINDOW": "3",
}


def db(fleet: Fleet) -> Path:
    return fleet.data_dir / "db.sqlite3"


def started(fleet: Fleet, key: str) -> bool:
    run = read_runs(db(fleet)).get(key)
    return run is not None and run.starts >= 1


def test_sigterm_lets_a_running_task_finish_within_the_drain_window(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    worker = fleet.start_worker(extra_env=TIMINGS_ENV)
    enqueue_timed_work(fleet.env["CELERY_BROKER_URL"], [("short", 1.0)])
    wait_until(lambda: started(fleet, "short"), timeout=30, what="the task to start")
    seconds = worker.stop(signal.SIGTERM, timeout=30)
    run = read_runs(db(fleet))["short"]
    assert (run.starts, run.effects, run.completions) == (1, 1, 1)
    assert redis_client.llen("default") == 0, "a finished task was requeued"
    assert redis_client.hlen("unacked") == 0
    assert worker.returncode() is not None
    assert seconds < 3 + 10, f"drain took {seconds:.1f}s, beyond drain window + margin"


def test_sigterm_exits_within_a_second_of_the_last_task_finishing(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    """Not the whole drain window: Celery would sleep all 20 s of it."""
    window = {**TIMINGS_ENV, "CELERY_FLEET_DRAIN_WINDOW": "20"}
    worker = fleet.start_worker(extra_env=window)
    enqueue_timed_work(fleet.env["CELERY_BROKER_URL"], [("finishing", 2.0)])
    wait_until(lambda: started(fleet, "finishing"), timeout=30, what="the task to start")
    worker.send(signal.SIGTERM)
    assert worker.wait(20 + 10) is not None
    exited = time.time()
    with sqlite3.connect(db(fleet)) as conn:
        (finished,) = conn.execute("SELECT finished_at FROM jobs_workrun WHERE key = 'finishing'").fetchone()
    finished_at = datetime.fromisoformat(finished).replace(tzinfo=UTC).timestamp()  # Django writes UTC
    lag = exited - finished_at
    print(f"worker exited {lag:.2f}s after its last task finished (drain window 20s)")
    assert read_runs(db(fleet))["finishing"].effects == 1
    assert redis_client.hlen("unacked") == 0, "acknowledged before the exit"
    assert lag < 1.0, f"the worker lingered {lag:.1f}s after its last task"


def test_sigterm_requeues_a_task_still_running_when_the_window_closes(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    worker = fleet.start_worker(extra_env=TIMINGS_ENV)
    enqueue_timed_work(fleet.env["CELERY_BROKER_URL"], [("long", 20.0)])
    wait_until(lambda: started(fleet, "long"), timeout=30, what="the task to start")
    assert (worker.probe_dir / READY_FILE).exists()  # type: ignore[attr-defined]
    worker.send(signal.SIGTERM)
    # Readiness goes at once, before the drain window closes.
    wait_until(
        lambda: not (worker.probe_dir / READY_FILE).exists(),  # type: ignore[attr-defined]
        timeout=2,
        what="readiness to turn false",
    )
    began = time.monotonic()
    assert worker.wait(3 + 10) is not None, "worker outlived drain window + margin"
    exited_after = time.monotonic() - began
    # Back on the queue at once: not parked in `unacked` until the visibility timeout.
    assert redis_client.llen("default") == 1
    assert redis_client.hlen("unacked") == 0
    run = read_runs(db(fleet))["long"]
    assert run.effects == 0
    # Another worker picks it up and finishes it: done once in effect, delivered twice.
    fleet.start_worker(extra_env=TIMINGS_ENV)
    wait_until(
        lambda: read_runs(db(fleet))["long"].effects == 1, timeout=60, what="the requeued task to finish"
    )
    run = read_runs(db(fleet))["long"]
    assert run.starts == 2
    assert run.effects == 1
    print(f"worker exited {exited_after:.1f}s after SIGTERM with a 3s drain window")


def test_sigkill_task_is_redelivered_after_the_visibility_timeout(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    env = {
        "CELERY_TASK_SOFT_TIME_LIMIT": "4",
        "CELERY_TASK_TIME_LIMIT": "5",
        "CELERY_FLEET_DRAIN_WINDOW": "2",
    }
    visibility = 5 + 30  # time limit + margin (celery_fleet.timings)
    worker = fleet.start_worker(extra_env=env)
    enqueue_timed_work(fleet.env["CELERY_BROKER_URL"], [("killed", 3.0)])
    wait_until(lambda: started(fleet, "killed"), timeout=30, what="the task to start")
    killed_at = time.monotonic()
    worker.send(signal.SIGKILL)
    worker.wait(10)
    # The pool child may outlive its parent for a moment; the message stays unacked, not lost.
    assert redis_client.hlen("unacked") == 1
    assert redis_client.llen("default") == 0
    fleet.start_worker(extra_env=env)
    wait_until(
        lambda: read_runs(db(fleet))["killed"].effects == 1,
        timeout=visibility + 60,
        what="redelivery after SIGKILL",
    )
    waited = time.monotonic() - killed_at
    assert waited >= visibility - 10, f"redelivered after {waited:.0f}s: before the visibility timeout"
    assert read_runs(db(fleet))["killed"].effects == 1


def test_malformed_and_unknown_messages_do_not_kill_or_wedge_the_worker(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    worker = fleet.start_worker()
    redis_client.lpush("default", b"\x00\xffthis is not a message")
    redis_client.lpush("default", b'{"body": "not base64!", "headers": {}, "properties": {}}')
    enqueue_unknown_task(fleet.env["CELERY_BROKER_URL"])
    enqueue_timed_work(fleet.env["CELERY_BROKER_URL"], [("after-garbage", 0.1)])
    wait_until(
        lambda: (
            read_runs(db(fleet)).get("after-garbage") and read_runs(db(fleet))["after-garbage"].effects == 1
        ),
        timeout=60,
        what="a good task after bad ones",
    )
    assert worker.alive()
    logs = fleet.logs()
    assert "no.such.task" in logs
    assert "unregistered task" in logs.lower()
    assert redis_client.llen("default") == 0
    # The ack follows the task's commit: wait for it rather than race it.
    wait_until(lambda: redis_client.hlen("unacked") == 0, timeout=10, what="the last ack")
    # Rejected, not dropped: the garbage and the unknown task wait in the dead-letter list.
    assert redis_client.llen(DEAD_LETTER_KEY) == 3


def enqueue_unknown_task(broker_url: str) -> None:
    send_tasks(broker_url, [("no.such.task", (1,), None)], "default")


@pytest.mark.parametrize("check", ["live", "ready"])
def test_probe_cli_reports_a_running_worker(fleet: Fleet, check: str) -> None:
    import subprocess
    import sys

    worker = fleet.start_worker()
    probe = [sys.executable, "-m", "celery_fleet.cli", "probe", check, "--dir", str(worker.probe_dir)]  # type: ignore[attr-defined]
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    worker.stop(signal.SIGTERM, timeout=30)
    result = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    if check == "ready":
        assert result.returncode == 1
        assert "not consuming" in result.stdout
