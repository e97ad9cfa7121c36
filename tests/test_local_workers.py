"""Worker groups of the local fleet, with real processes: the autoscaler and the supervision loop
change a group from two threads at once, and every worker process is counted.

The processes are stand-ins (a Python that sleeps until SIGTERM) so that a hundred starts cost
seconds, not minutes; what is under test is the group's bookkeeping of real child processes.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
from pathlib import Path

import psutil

from celery_fleet.local.processes import LineSink, RestartBackoff
from celery_fleet.local.waiting import wait_until
from celery_fleet.local.workers import WorkerGroup, WorkerGroupSpec

MARKER = "celery-fleet-test-stand-in-worker"


class StandInGroup(WorkerGroup):
    def worker_argv(self, name: str) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(300)", MARKER, name]


def stand_ins() -> list[psutil.Process]:
    """Every stand-in worker process alive now (counted by the OS, not by the group)."""
    found = []
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if MARKER in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def group(tmp_path: Path, lines: list[tuple[str, str]]) -> StandInGroup:
    sink: LineSink = lambda name, line: lines.append((name, line))  # noqa: E731
    return StandInGroup(
        spec=WorkerGroupSpec("default", ("default",), min_workers=1, max_workers=6),
        env=dict(os.environ),
        probe_root=tmp_path / "probes",
        sink=sink,
        grace_period=10.0,
        celery_app="unused",
        # Crashes here come right after a start, and are replaced at once all the same: this test
        # is about the bookkeeping (the delay: the test below, and tests/test_up.py on a real fleet).
        restart_backoff=RestartBackoff(quick_exit_seconds=0.0),
    )


def test_scaling_while_the_supervision_loop_runs_never_makes_an_extra_worker(tmp_path: Path) -> None:
    lines: list[tuple[str, str]] = []
    workers = group(tmp_path, lines)
    stop = threading.Event()
    replaced: list[str] = []

    def supervise() -> None:  # the fleet's loop, as fast as it can go to widen any race window
        while not stop.is_set():
            replaced.extend(w.name for w in workers.replace_crashed())

    loop = threading.Thread(target=supervise, daemon=True)
    rng = random.Random(16)
    expected = 0
    kills = 0
    try:
        workers.scale_up(1)
        expected = 1
        loop.start()
        for step in range(40):
            if expected < 6 and (expected == 1 or rng.random() < 0.6):
                count = rng.randint(1, 6 - expected)
                workers.scale_up(count)
                expected += count
            else:
                count = rng.randint(1, expected - 1)
                workers.scale_down(count, wait=True)
                expected -= count
            if step % 8 == 7:  # a real crash now and then: it must be replaced, by one
                victim = rng.choice(workers.workers)
                os.kill(victim.process.pid, signal.SIGKILL)
                kills += 1
                wait_until(lambda v=victim: not v.process.alive(), timeout=10, what="the crash")
                wait_until(lambda n=kills: len(replaced) >= n, timeout=10, what="the replacement")
            alive = wait_until(
                lambda n=expected: len(s := stand_ins()) == n and s,
                timeout=10,
                what=f"{expected} worker processes after step {step}",
            )
            assert len(alive) == expected == workers.target == workers.replicas(), (step, len(alive))
        # Settled: still exactly the target, so no late extra start was on its way either.
        assert len(stand_ins()) == expected
        assert len(replaced) == kills, replaced
    finally:
        stop.set()
        loop.join(timeout=10)
        workers.stop_all()
    assert stand_ins() == []
    said = [line for name, line in lines if name == "celery-fleet"]
    assert sum("was killed by SIGKILL; starting a replacement" in line for line in said) == kills
    assert any(line.endswith("s drain") and "stopped after a" in line for line in said)


def test_restart_backoff_grows_while_a_process_keeps_dying_young_and_resets_after_a_long_run() -> None:
    backoff = RestartBackoff(quick_exit_seconds=10.0)
    assert [backoff.delay_after(ran) for ran in (0.5, 1.0, 2.0, 0.1)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff.delay_after(60.0) == 0.0  # it ran a while: this death is news, restart at once
    assert backoff.delay_after(0.2) == 1.0
    assert [backoff.delay_after(0.0) for _ in range(8)][-1] == 30.0  # capped
