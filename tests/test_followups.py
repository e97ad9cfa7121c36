"""Follow-ups (link / link_error) run within seconds of their job, whatever waits in its queue."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from celery_fleet.followups import route
from celery_fleet.local.waiting import wait_until
from tests.support.fleet import Fleet


def test_follow_ups_that_name_no_queue_go_to_the_follow_up_queue() -> None:
    plain = {"task": "t.done", "args": [], "kwargs": {}, "options": {}, "subtask_type": None}
    routed = {"task": "t.audit", "options": {"queue": "audit"}, "subtask_type": None}
    group = {"task": "celery.group", "options": {}, "subtask_type": "group"}
    body: tuple[Any, ...] = ((), {}, {"callbacks": [plain, routed, group], "errbacks": [{"task": "t.err"}]})
    route(body, "followups")
    callbacks, errbacks = body[2]["callbacks"], body[2]["errbacks"]
    assert callbacks[0]["options"] == {"queue": "followups"}
    assert callbacks[1]["options"] == {"queue": "audit"}  # already routed: kept
    assert callbacks[2]["options"] == {}  # a group keeps its members' routing
    assert errbacks[0]["options"] == {"queue": "followups"}
    route(((), {}, {"callbacks": None, "errbacks": None}), "followups")  # nothing to route
    route(("not", "protocol", 2), "followups")


def jobs_state(db: Path) -> list[tuple[str, str | None, list[str]]]:
    with sqlite3.connect(db, timeout=30) as conn:
        rows = conn.execute(
            "SELECT id, finished_at, callbacks_ran FROM jobs_job ORDER BY created_at"
        ).fetchall()
    return [(row[0], row[1], json.loads(row[2])) for row in rows]


@pytest.mark.slow
def test_a_follow_up_does_not_wait_behind_the_backlog(fleet: Fleet, redis_client: redis.Redis) -> None:
    slow_jobs = {"JOBS_STEP_DELAY": "0.2"}  # ~1 s per job of 50 users
    fleet.start_worker(["default"], concurrency=1, name="only", extra_env=slow_jobs)  # --queues default
    url = fleet.start_web()
    for _ in range(12):
        response = httpx.post(f"{url}/api/jobs/", json={"kind": "random_users", "total": 50}, timeout=30)
        assert response.status_code == 202, response.text
    # The jobs' messages carry their follow-ups routed to the follow-up queue.
    waiting = redis_client.lindex("default", 0)
    assert waiting is not None
    embed = json.loads(base64.b64decode(json.loads(waiting)["body"]))[2]
    assert embed["callbacks"][0]["options"]["queue"] == "followups"
    assert embed["errbacks"][0]["options"]["queue"] == "followups"

    db = fleet.data_dir / "db.sqlite3"
    wait_until(lambda: "on_success" in jobs_state(db)[0][2], timeout=120, what="the first job's follow-up")
    finished = sum(1 for _, done, _ in jobs_state(db) if done)
    backlog = int(redis_client.llen("default"))
    # It ran next, ahead of the ten jobs still waiting (one worker, one process: it could only
    # have run after them if it had queued behind them), and it never counted in their queue.
    assert finished <= 2, f"{finished} jobs finished before the first job's follow-up ran"
    assert backlog >= 8, backlog
    began = time.monotonic()
    wait_until(
        lambda: all("on_success" in ran for _, _, ran in jobs_state(db)), timeout=120, what="every follow-up"
    )
    assert time.monotonic() - began < 60
    assert redis_client.llen("followups") == 0
