"""The local autoscaler against real Redis and real worker processes.

A burst on the ``default`` queue scales its group up; once the burst drains the group goes
back to its minimum through the graceful drain - while the last, long tasks still run, so
scale-down has to pick idle workers first and let a busy one finish.  Every task is counted:
applied exactly once and started exactly once (a task cut short by scale-down and redelivered
would start twice).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from celery_fleet.autoscale.local import GroupTarget, LocalAutoscaler, WorkerGroupsControl, redis_stats_reader
from celery_fleet.autoscale.policy import PolicyType as T
from celery_fleet.autoscale.policy import RatePolicy, ScalingRules, recommended_policy
from celery_fleet.local.processes import file_sink
from celery_fleet.local.waiting import wait_until
from celery_fleet.local.workers import WorkerGroup, WorkerGroupSpec
from tests.support.fleet import Fleet
from tests.support.ledger import enqueue_timed_work, read_runs

pytestmark = pytest.mark.slow

SHORT_TASKS = 24
SHORT_SECONDS = 1.5
LONG_TASKS = 2
LONG_SECONDS = 15.0


def test_burst_scales_up_and_back_down_to_min_with_every_task_accounted_for(
    fleet: Fleet, redis_client: redis.Redis, tmp_path: Path
) -> None:
    broker_url = fleet.env["CELERY_BROKER_URL"]
    spec = WorkerGroupSpec(
        name="default", queues=("default",), min_workers=1, max_workers=4, initial_workers=1
    )
    group = WorkerGroup(
        spec=spec,
        env=fleet.env,
        probe_root=tmp_path / "probes",
        sink=file_sink(fleet.log_path),
        grace_period=60.0,
    )
    # celery-fleet's policy with its windows shortened so the test takes about a minute.
    base = recommended_policy(backlog_per_worker=2.0, oldest_age_target_seconds=None)
    policy = replace(
        base,
        min_replicas=1,
        max_replicas=4,
        behavior=replace(base.behavior, scale_down=ScalingRules(8, (RatePolicy(T.PERCENT, 100, 5),))),
    ).validated()
    lines: list[str] = []
    scaler = LocalAutoscaler(
        WorkerGroupsControl({"default": group}),
        [GroupTarget("default", ("default",), policy)],
        redis_stats_reader(broker_url),
        log=lines.append,
    )
    stop = threading.Event()
    loop = threading.Thread(target=scaler.run, args=(stop, 1.0), daemon=True)
    try:
        group.scale_up(1)
        wait_until(lambda: group.workers[0].ready(), timeout=90, what="the first worker to be ready")
        loop.start()

        short = [(f"short-{i}", SHORT_SECONDS) for i in range(SHORT_TASKS)]
        long = [(f"long-{i}", LONG_SECONDS) for i in range(LONG_TASKS)]
        enqueue_timed_work(broker_url, short + long)
        keys = {key for key, _ in short + long}

        wait_until(lambda: group.replicas() >= 3, timeout=90, what="the group to scale up under the burst")
        db = Path(fleet.env["DATABASE_URL"].removeprefix("sqlite:///"))

        def all_applied() -> bool:
            runs = read_runs(db)
            return keys <= runs.keys() and all(runs[k].effects == 1 for k in keys)

        wait_until(all_applied, timeout=240, interval=0.5, what="every task of the burst to be applied")
        wait_until(
            lambda: group.replicas() == 1 and not group.draining,
            timeout=180,
            interval=0.5,
            what="the group to drain back to its minimum",
        )
    finally:
        stop.set()
        loop.join(timeout=30)
        group.stop_all()
        print("\n".join(lines))

    runs = read_runs(db)
    assert runs.keys() == keys
    for key in sorted(keys):
        run = runs[key]
        assert (run.starts, run.effects, run.completions) == (1, 1, 1), f"{key}: {run}"
    assert redis_client.llen("default") == 0
    assert redis_client.hlen("unacked") == 0

    desired = [d.desired for _, _, d in scaler.history]
    assert max(desired) >= 3
    assert desired[-1] == 1
    assert any("desired=1" in line and "current=1" not in line for line in lines), lines
    # Every drain was graceful: removed workers exited on their own, none was SIGKILLed.
    assert group.drain_seconds
    assert max(group.drain_seconds) < 60.0
    assert "SIGKILL" not in fleet.logs()
