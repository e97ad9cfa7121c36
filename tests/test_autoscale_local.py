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
from tests.support.fleet import EXAMPLE, Fleet
from tests.support.ledger import enqueue_timed_work, read_runs

SHORT_TASKS = 24
SHORT_SECONDS = 1.5
LONG_TASKS = 2
LONG_SECONDS = 15.0


@pytest.mark.slow
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
        celery_app=EXAMPLE.celery_app,
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


class Stats:
    def __init__(self, waiting: int, held: int, oldest_age_seconds: float | None) -> None:
        self.waiting, self.held, self.oldest_age_seconds = waiting, held, oldest_age_seconds


class CountingControl:
    """In-memory replica counts: a unit test of the loop's bookkeeping, not of workers."""

    def __init__(self, **replicas: int) -> None:
        self.counts = dict(replicas)
        self.calls: list[tuple[str, str, int]] = []

    def replicas(self, group: str) -> int:
        return self.counts[group]

    def scale_up(self, group: str, count: int) -> None:
        self.calls.append(("up", group, count))
        self.counts[group] += count

    def scale_down(self, group: str, count: int) -> None:
        self.calls.append(("down", group, count))
        self.counts[group] -= count


def test_group_metrics_sum_the_queues_of_a_group() -> None:
    from celery_fleet.autoscale.local import group_metrics

    stats = {"a": Stats(3, 1, 4.0), "b": Stats(0, 2, None), "c": Stats(9, 9, 99.0), "d": Stats(2, 0, None)}
    m = group_metrics(stats, ("a", "b", "missing"))
    assert (m.waiting, m.held, m.oldest_age_seconds, m.backlog) == (3, 3, 4.0, 6)
    # Messages wait but the oldest carries no publish stamp: the age cannot be read (not 0 s).
    unstamped = group_metrics(stats, ("a", "d"))
    assert (unstamped.waiting, unstamped.oldest_age_seconds) == (5, None)


def test_step_scales_each_group_and_logs_changes_once() -> None:
    stats = {"default": Stats(10, 0, 3.0), "exports": Stats(0, 0, None)}
    control = CountingControl(default=1, exports=2)
    policy = replace(recommended_policy(backlog_per_worker=2.0), min_replicas=1, max_replicas=4)
    lines: list[str] = []
    now = [0.0]
    scaler = LocalAutoscaler(
        control,
        [GroupTarget("default", ("default",), policy), GroupTarget("exports", ("exports",), policy)],
        lambda queues: stats,
        log=lines.append,
        clock=lambda: now[0],
    )
    decisions = scaler.step()
    assert decisions["default"].desired == 4  # ceil(10 / 2) = 5, max 4
    # A fresh autoscaler records the current count first (as a new HPA does): the 30 s
    # scale-down window holds the idle group at 2 instead of dropping it at once.
    assert decisions["exports"].desired == 2
    assert control.calls == [("up", "default", 3)]
    assert len(lines) == 2
    assert lines[0].startswith("autoscale group=default current=1 desired=4 backlog=10")
    now[0] = 5.0
    stats["default"] = Stats(0, 8, 0.0)
    scaler.step()  # new inputs for default: one line; exports unchanged: quiet
    assert len(lines) == 3
    assert "group=default current=4 desired=4 backlog=8" in lines[2]
    scaler.step()  # the same again, nothing changes: quiet
    assert len(lines) == 3
    now[0] = 31.0
    assert scaler.step()["exports"].desired == 1  # the first recommendation left the window
    assert control.calls[-1] == ("down", "exports", 1)
    assert control.counts == {"default": 4, "exports": 1}


def test_a_failed_read_makes_no_decision() -> None:
    def broken(queues: object) -> dict[str, Stats]:
        raise ConnectionError("broker down")

    control = CountingControl(default=3)
    scaler = LocalAutoscaler(control, [GroupTarget("default", ("default",), recommended_policy())], broken)
    with pytest.raises(ConnectionError):
        scaler.step()
    assert control.calls == []


def test_build_local_autoscaler_takes_each_group_from_the_fleet() -> None:
    from celery_fleet.autoscale.local import ScalableFleet, build_local_autoscaler
    from celery_fleet.autoscale.policy import Decision

    class Fleet(CountingControl):
        """What the autoscaler needs from a fleet (ScalableFleet), with in-memory counts."""

        broker_url = "redis://127.0.0.1:1/0"

        def __init__(self) -> None:
            super().__init__(default=1, exports=1)
            self.decisions: list[tuple[str, Decision]] = []
            self.lines: list[str] = []

        def scaled_groups(self) -> list[WorkerGroupSpec]:
            return [
                WorkerGroupSpec("default", ("default",), concurrency=2, min_workers=1, max_workers=4),
                WorkerGroupSpec("exports", ("exports", "periodic"), min_workers=1, max_workers=2),
            ]

        def record_decision(self, group: str, decision: Decision) -> None:
            self.decisions.append((group, decision))

        def report(self, line: str) -> None:
            self.lines.append(line)

    fleet = Fleet()
    typed: ScalableFleet = fleet  # the fake is what the Protocol asks for (mypy checks the real one)
    scaler = build_local_autoscaler(typed)
    targets = {t.name: t for t in scaler.groups}
    assert targets["default"].queues == ("default",)
    assert targets["exports"].queues == ("exports", "periodic")
    assert targets["default"].policy.backlog_per_worker == 4.0  # 2 per worker process
    assert (targets["default"].policy.min_replicas, targets["default"].policy.max_replicas) == (1, 4)
    assert targets["exports"].policy.max_replicas == 2
    # The fleet is the control and hears every decision; a failed step is reported to it.
    scaler.read_stats = lambda queues: {"default": Stats(6, 0, 1.0)}
    scaler.step()
    assert [(g, d.desired) for g, d in fleet.decisions] == [("default", 2), ("exports", 1)]
    assert fleet.calls == [("up", "default", 1)]
    stop = threading.Event()

    def broken(queues: object) -> dict[str, Stats]:
        stop.set()
        raise ConnectionError("broker down")

    scaler.read_stats = broken
    scaler.run(stop, 0.01)
    assert fleet.lines == ["autoscale step failed: ConnectionError('broker down')"]
