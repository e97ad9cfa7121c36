"""No payload of any shape crashes a worker: a corpus of malformed messages pushed onto a
queue while normal tasks run, with real workers and a real Redis."""

from __future__ import annotations

import random

import redis

from celery_fleet.exporter.collectors import RedisQueueCollector
from celery_fleet.local.waiting import wait_until
from celery_fleet.transport import DEAD_LETTER_KEY
from tests.support.fleet import Fleet
from tests.support.ledger import enqueue_timed_work, read_runs
from tests.support.poison import RUNS_AS_A_TASK, corpus


def test_no_payload_crashes_a_worker_and_the_undecodable_are_dead_lettered(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    workers = [fleet.start_worker(("default",)) for _ in range(2)]
    pids = [w.pid for w in workers]
    items = corpus()
    assert len(items) >= 50
    rng = random.Random(5)
    normal = [(f"normal-{i:02d}", rng.choice((0.05, 0.1, 0.2))) for i in range(60)]
    # Interleaved: a few normal tasks, a few bad payloads, while the workers consume.
    bad = list(items)
    while normal or bad:
        if normal:
            enqueue_timed_work(fleet.env["CELERY_BROKER_URL"], [normal.pop()])
        for _ in range(min(len(bad), 2)):
            redis_client.lpush("default", bad.pop()[1])
    keys = [f"normal-{i:02d}" for i in range(60)]
    wait_until(
        lambda: all((run := read_runs(fleet.data_dir / "db.sqlite3").get(k)) and run.effects for k in keys),
        timeout=180,
        what="every normal task to take effect",
    )
    wait_until(
        lambda: redis_client.llen("default") == 0 and redis_client.hlen("unacked") == 0,
        timeout=60,
        what="the queue to be empty and nothing held",
    )
    runs = read_runs(fleet.data_dir / "db.sqlite3")
    assert all(runs[k].effects == 1 and runs[k].starts == 1 for k in keys), "normal tasks ran once each"
    assert all(w.alive() for w in workers), "a worker exited"
    assert [w.pid for w in workers] == pids
    logs = fleet.logs()
    assert "Unrecoverable error" not in logs
    expected = len(items) - len(RUNS_AS_A_TASK)
    assert redis_client.llen(DEAD_LETTER_KEY) == expected, (
        "every undecodable payload, once, in the dead-letter list"
    )
    # The exporter reports it (celery_fleet_dead_letter_messages).
    metrics = {m.name: m for m in RedisQueueCollector(redis_client, lambda: ["default"]).collect()}
    assert metrics["celery_fleet_dead_letter_messages"].samples[0].value == expected
