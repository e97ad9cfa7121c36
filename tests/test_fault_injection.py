"""Fault injection: SIGTERM and SIGKILL workers at random moments and restart Redis mid-run,
then count every task. Each must take effect exactly once (redeliveries are allowed and
caught by the idempotency key); none may be lost."""

from __future__ import annotations

import os
import random
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from celery_fleet.local.processes import ManagedProcess
from celery_fleet.local.redis_server import RedisServer
from celery_fleet.local.waiting import free_port, wait_until
from tests.support.fleet import Fleet, base_env, migrate
from tests.support.ledger import enqueue_timed_work, read_runs

SEEDS = [int(s) for s in os.environ.get("FAULT_SEEDS", "11,23,42").split(",")]
TASKS = 200
WORKERS = 4
DURATIONS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0)
WEIGHTS = (25, 20, 20, 15, 10, 6, 4)
TIMINGS_ENV = {
    "CELERY_TASK_SOFT_TIME_LIMIT": "8",
    "CELERY_TASK_TIME_LIMIT": "10",
    "CELERY_FLEET_DRAIN_WINDOW": "2",
}
VISIBILITY = 10 + 30  # time limit + margin, as celery_fleet.timings derives it
GRACE = 2 + 10


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(data_dir=tmp_path / "redis", port=free_port(), appendonly=True).start()
    yield server
    server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_every_task_takes_effect_exactly_once_under_faults(
    tmp_path: Path, own_redis: RedisServer, seed: int
) -> None:
    rng = random.Random(seed)
    env = base_env(tmp_path, own_redis.url, **TIMINGS_ENV)
    migrate(env)
    fleet = Fleet(data_dir=tmp_path, env=env, log_path=tmp_path / "fleet.log")
    client = redis.Redis(host=own_redis.host, port=own_redis.port)
    drains: list[float] = []
    actions: list[str] = []
    try:
        workers: list[ManagedProcess] = [
            fleet.start_worker(("default",), extra_env=TIMINGS_ENV) for _ in range(WORKERS)
        ]
        items = [(f"s{seed}-t{i:03d}", rng.choices(DURATIONS, WEIGHTS)[0]) for i in range(TASKS)]
        enqueue_timed_work(own_redis.url, items)
        expected = {key for key, _ in items}

        def effects_done() -> int:
            return sum(1 for run in read_runs(tmp_path / "db.sqlite3").values() if run.effects)

        redis_restart_at = rng.randint(2, 4)
        for step in range(8):
            time.sleep(rng.uniform(1.0, 2.5))  # chaos pacing: random moments, not synchronisation
            if step == redis_restart_at:
                own_redis.restart()
                actions.append("restart redis")
                continue
            victim = rng.choice(workers)
            workers.remove(victim)
            if rng.random() < 0.65:
                victim.send(signal.SIGTERM)
                began = time.monotonic()
                assert victim.wait(GRACE + 5) is not None, f"{victim.name} outlived its grace period"
                drains.append(time.monotonic() - began)
                actions.append(f"SIGTERM {victim.name}")
            else:
                victim.send(signal.SIGKILL)
                victim.wait(10)
                actions.append(f"SIGKILL {victim.name}")
            workers.append(fleet.start_worker(("default",), extra_env=TIMINGS_ENV, wait_ready=False))

        wait_until(
            lambda: effects_done() == TASKS,
            timeout=VISIBILITY + 5 + 180,
            interval=1.0,
            what=f"all {TASKS} tasks to take effect (actions: {actions})",
        )
        runs = read_runs(tmp_path / "db.sqlite3")
        assert set(runs) == expected, "a task ran that was never sent, or one never ran"
        assert all(run.effects == 1 for run in runs.values()), "a task took effect twice"
        # Nothing left behind on the broker once everything finished.
        wait_until(
            lambda: client.llen("default") == 0 and client.hlen("unacked") == 0,
            timeout=30,
            what="an empty queue and no unacked messages",
        )
        redelivered = sorted(key for key, run in runs.items() if run.starts > 1)
        duplicates = sum(run.completions - 1 for run in runs.values() if run.completions > 1)
        print(
            f"\nseed {seed}: {TASKS} tasks, actions: {', '.join(actions)}\n"
            f"  redelivered: {len(redelivered)}, completed twice (effect applied once): {duplicates}\n"
            f"  SIGTERM drain seconds: {', '.join(f'{d:.1f}' for d in drains)}"
            + (f" (median {statistics.median(drains):.1f}, max {max(drains):.1f})" if drains else "")
        )
        assert all(d <= GRACE for d in drains), f"a drain outlived the grace period: {drains}"
    finally:
        fleet.stop_all()
        client.close()
