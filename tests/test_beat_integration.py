"""Beat against real Redis and a real worker: on time, repeatedly, and once however many beats run.

Sends are counted twice, independently: each beat's own ``Sending due task`` log lines
(who sent), and the worker's ``Task ...[id] received`` lines (what arrived, by task id).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from celery_fleet import roles
from celery_fleet.beat import ACTIVE, HEARTBEAT_FILE, STANDBY
from celery_fleet.local.processes import ManagedProcess, file_sink
from celery_fleet.local.waiting import wait_until
from tests.support.fleet import EXAMPLE, Fleet

#: The example project's housekeeping queue (fleetsite.settings.PERIODIC_QUEUE).
PERIODIC_QUEUE = "periodic"

pytestmark = pytest.mark.slow

REDBEAT = "celery_fleet.beat.LockedRedBeatScheduler"
DATABASE = "celery_fleet.beat:LockedDatabaseScheduler"
CLEANUP = "jobs.tasks.cleanup_exports"
SENDING = re.compile(r"Scheduler: Sending due task (?P<entry>\S+) \((?P<task>\S+)\)")
RECEIVED = re.compile(
    r"^(?P<ts>\d+\.\d+) (?P<proc>\S+) \| .*Task (?P<task>[\w.]+)\[(?P<id>[0-9a-f-]+)\] received"
)
SUCCEEDED = re.compile(r"Task (?P<task>[\w.]+)\[(?P<id>[0-9a-f-]+)\] succeeded")


@dataclass
class Beat:
    """A beat process whose output lines are also kept here, timestamped, for counting."""

    name: str
    process: ManagedProcess
    probe_dir: Path
    lines: list[tuple[float, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sends(self, task: str = CLEANUP) -> list[float]:
        with self._lock:
            return [ts for ts, line in self.lines if (m := SENDING.search(line)) and m["task"] == task]

    def logged(self, text: str) -> bool:
        with self._lock:
            return any(text in line for _, line in self.lines)

    def text(self) -> str:
        with self._lock:
            return "\n".join(line for _, line in self.lines)


def start_beat(fleet: Fleet, name: str, scheduler: str = REDBEAT, **env: str) -> Beat:
    probe_dir = fleet.data_dir / "probes" / name
    to_log = file_sink(fleet.log_path)
    holder: list[Beat] = []

    def sink(proc: str, line: str) -> None:
        to_log(proc, line)
        beat = holder[0]
        with beat._lock:
            beat.lines.append((time.time(), line))

    beat_env = {
        **fleet.env,
        "CELERY_BEAT_SCHEDULER": scheduler,
        "CELERY_FLEET_PROBE_DIR": str(probe_dir),
        **env,
    }
    process = ManagedProcess(name, roles.beat_argv(app=EXAMPLE.celery_app), env=beat_env, sink=sink)
    holder.append(Beat(name, process, probe_dir))
    process.start()
    fleet.processes.append(process)
    return holder[0]


def received(fleet: Fleet, task: str = CLEANUP) -> list[tuple[float, str]]:
    """(time, task id) of every delivery of ``task`` to a worker, from the workers' logs."""
    return [
        (float(m["ts"]), m["id"])
        for line in fleet.logs().splitlines()
        if (m := RECEIVED.match(line)) and m["task"] == task
    ]


def succeeded_ids(fleet: Fleet, task: str = CLEANUP) -> set[str]:
    return {m["id"] for m in SUCCEEDED.finditer(fleet.logs()) if m["task"] == task}


def alive(*beats: Beat) -> Callable[[], None]:
    def check() -> None:
        for beat in beats:
            code = beat.process.returncode()
            if code is not None:
                raise AssertionError(f"{beat.name} exited with {code}:\n{beat.text()[-3000:]}")

    return check


def wait_for_runs(fleet: Fleet, count: int, *beats: Beat, timeout: float) -> list[tuple[float, str]]:
    check = alive(*beats)

    def enough() -> list[tuple[float, str]] | None:
        check()
        runs = received(fleet)
        return runs if len(runs) >= count else None

    return wait_until(enough, timeout=timeout, interval=0.2, what=f"{count} runs of {CLEANUP}")


def assert_each_run_once(runs: list[tuple[float, str]], every: float) -> None:
    ids = [task_id for _, task_id in runs]
    assert len(ids) == len(set(ids)), f"a message was delivered twice: {ids}"
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(runs)]
    # A doubled run shows up as two deliveries a moment apart instead of one interval apart.
    assert min(gaps) > every / 2, f"two runs {min(gaps):.2f}s apart (schedule every {every}s): {gaps}"


def test_beat_and_worker_run_the_periodic_task_on_time_repeatedly(fleet: Fleet) -> None:
    every = 3.0
    fleet.start_worker(queues=(PERIODIC_QUEUE,), name="periodic")
    beat = start_beat(
        fleet,
        "beat",
        CLEANUP_EXPORTS_EVERY=str(every),
        CELERY_REDBEAT_LOCK_TIMEOUT="30",
        CELERY_REDBEAT_REDIS_URL=fleet.env["CELERY_BROKER_URL"],
    )

    runs = wait_for_runs(fleet, 6, beat, timeout=120)

    assert_each_run_once(runs, every)
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(runs)]
    # On time: one run per interval; a busy shared machine may add a second or so to a gap.
    assert every * 0.8 <= statistics.mean(gaps) <= every * 1.5, gaps
    assert max(gaps) < every * 2 + 1, gaps
    # Beat and worker agree: every send arrived on the periodic queue's worker and ran.
    assert len(beat.sends()) >= len(runs)
    wait_until(lambda: {i for _, i in runs} <= succeeded_ids(fleet), timeout=30, what="the runs to succeed")
    # The default second entry exists too but is hourly: it was not sent within the test.
    assert beat.sends("jobs.tasks.backup_database") == []
    # CELERY_REDBEAT_REDIS_URL reached redbeat (it does not see Django-namespaced settings by itself).
    assert not beat.logged("stop falling back to broker_url"), beat.text()[:3000]


def test_beat_keeps_its_lock_across_sleeps_longer_than_the_lock_timeout(fleet: Fleet) -> None:
    """Plain redbeat sleeps up to 300 s between ticks and dies when its lock expired meanwhile."""
    every, lock_timeout = 9.0, 5
    fleet.start_worker(queues=(PERIODIC_QUEUE,), name="periodic")
    beat = start_beat(
        fleet, "beat", CLEANUP_EXPORTS_EVERY=str(every), CELERY_REDBEAT_LOCK_TIMEOUT=str(lock_timeout)
    )

    runs = wait_for_runs(fleet, 3, beat, timeout=120)

    assert_each_run_once(runs, every)
    assert beat.process.alive()
    assert not beat.logged("lost the lock"), beat.text()[-3000:]


def _probe(beat: Beat, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "celery-fleet"),
            "probe-beat",
            "--dir",
            str(beat.probe_dir),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_two_beats_started_together_send_each_run_once_and_the_standby_takes_over(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    every, lock_timeout = 2.0, 5
    fleet.start_worker(queues=(PERIODIC_QUEUE,), name="periodic")
    settings = {"CLEANUP_EXPORTS_EVERY": str(every), "CELERY_REDBEAT_LOCK_TIMEOUT": str(lock_timeout)}
    one, two = start_beat(fleet, "beat-a", **settings), start_beat(fleet, "beat-b", **settings)

    runs = wait_for_runs(fleet, 6, one, two, timeout=120)
    window = runs[-1][0] - runs[0][0]

    active, standby = (one, two) if one.sends() else (two, one)
    assert standby.sends() == [], "both beats sent the schedule"
    assert standby.logged("standing by: another beat holds the lock redbeat::lock"), standby.text()[-3000:]
    assert_each_run_once(runs, every)
    # At most one run per interval (+1 for where the window's edges fall), never twice as many.
    assert len(runs) <= window / every + 2, (len(runs), window)

    # Probes: both beats are live; only the active one holds the lock.
    assert json_state(active) == ACTIVE
    assert json_state(standby) == STANDBY
    assert _probe(active).returncode == 0
    assert _probe(active, "--active").returncode == 0
    assert _probe(standby).returncode == 0
    refused = _probe(standby, "--active")
    assert refused.returncode == 1, refused.stdout
    assert "held by" in refused.stdout, refused.stdout

    # The active beat dies without a word: the standby sends once the lock has expired.
    active.process.send(signal.SIGKILL)
    killed_at = time.time()
    active.process.wait(10)
    before = len(received(fleet))
    wait_until(
        lambda: alive(standby)() or standby.sends(), timeout=lock_timeout + 60, what="the standby to send"
    )
    taken_over_at = standby.sends()[0]
    assert taken_over_at - killed_at < lock_timeout + 10, "the standby took too long to take over"
    after = wait_for_runs(fleet, before + 3, standby, timeout=60)
    assert_each_run_once(after, every)
    assert _probe(standby, "--active").returncode == 0
    # The dead beat's heartbeat goes stale: its liveness probe fails.
    wait_until(lambda: _probe(active, "--max-age", "2").returncode == 1, timeout=30, what="a stale heartbeat")
    assert redis_client.get("redbeat::lock") is not None


def json_state(beat: Beat) -> str:
    return str(json.loads((beat.probe_dir / HEARTBEAT_FILE).read_text(encoding="utf-8"))["state"])


def test_a_stopping_beat_hands_the_lock_over_at_once(fleet: Fleet, redis_client: redis.Redis) -> None:
    every, lock_timeout = 2.0, 60  # a handover by expiry would take a minute
    fleet.start_worker(queues=(PERIODIC_QUEUE,), name="periodic")
    settings = {"CLEANUP_EXPORTS_EVERY": str(every), "CELERY_REDBEAT_LOCK_TIMEOUT": str(lock_timeout)}
    first = start_beat(fleet, "beat-a", **settings)
    wait_for_runs(fleet, 2, first, timeout=90)
    second = start_beat(fleet, "beat-b", **settings)
    wait_until(lambda: alive(second)() or second.logged("standing by"), timeout=60, what="beat-b to stand by")

    stopped_at = time.time()
    assert first.process.stop(signal.SIGTERM, timeout=30) < 30
    assert first.logged("released the lock redbeat::lock")
    wait_until(lambda: alive(second)() or second.sends(), timeout=45, what="beat-b to send")
    assert second.sends()[0] - stopped_at < 20, "beat-b waited for the lock to expire instead of the release"
    runs = wait_for_runs(fleet, len(received(fleet)) + 2, second, timeout=60)
    assert_each_run_once(runs, every)


SETTINGS_WITH_AN_EXTRA_ENTRY = """
from fleetsite.settings import *  # noqa: F403

CELERY_BEAT_SCHEDULE = {
    **CELERY_BEAT_SCHEDULE,  # noqa: F405
    "retired-entry": {"task": "jobs.tasks.noop", "schedule": 3600.0},
}
"""


def test_schedule_changes_in_settings_apply_on_restart_and_removed_entries_go(
    fleet: Fleet, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # An earlier release had one more entry, and ran cleanup hourly.
    (tmp_path / "old_release_settings.py").write_text(SETTINGS_WITH_AN_EXTRA_ENTRY, encoding="utf-8")
    old = start_beat(
        fleet,
        "beat-old",
        DJANGO_SETTINGS_MODULE="old_release_settings",
        PYTHONPATH=os.pathsep.join([str(tmp_path), fleet.env["PYTHONPATH"]]),
        CLEANUP_EXPORTS_EVERY="3600",
    )
    wait_until(lambda: alive(old)() or json_state(old) == ACTIVE, timeout=60, what="the old beat to run")
    assert redis_client.exists("redbeat:retired-entry")
    assert redis_client.zscore("redbeat::schedule", "redbeat:retired-entry") is not None
    assert old.process.stop(signal.SIGTERM, timeout=30) < 30
    assert old.sends() == []
    assert old.sends("jobs.tasks.noop") == []

    # The new release: the entry is gone from settings, cleanup runs every 2 s.
    fleet.start_worker(queues=(PERIODIC_QUEUE,), name="periodic")
    new = start_beat(fleet, "beat-new", CLEANUP_EXPORTS_EVERY="2")
    runs = wait_for_runs(fleet, 3, new, timeout=90)
    assert_each_run_once(runs, 2.0)
    assert not redis_client.exists("redbeat:retired-entry")
    assert redis_client.zscore("redbeat::schedule", "redbeat:retired-entry") is None
    assert b"retired-entry" not in redis_client.smembers("redbeat::statics")
    assert received(fleet, "jobs.tasks.noop") == []


def test_database_scheduler_beats_send_each_run_once_and_hand_over_without_repeats(fleet: Fleet) -> None:
    """django-celery-beat's scheduler has no lock of its own; LockedDatabaseScheduler adds one."""
    # The interval is longer than a takeover (lock timeout + one loop): a standby that went by the
    # last_run_at it loaded at start, not the database's, would send again at once on taking over.
    every, lock_timeout = 10.0, 5
    fleet.start_worker(queues=(PERIODIC_QUEUE,), name="periodic")
    settings = {"CLEANUP_EXPORTS_EVERY": str(every), "CELERY_REDBEAT_LOCK_TIMEOUT": str(lock_timeout)}
    one = start_beat(fleet, "dbbeat-a", DATABASE, **settings)
    two = start_beat(fleet, "dbbeat-b", DATABASE, **settings)

    runs = wait_for_runs(fleet, 2, one, two, timeout=120)
    active, standby = (one, two) if one.sends() else (two, one)
    assert standby.sends() == [], "both database beats sent the schedule"
    assert standby.logged("standing by"), standby.text()[-3000:]
    assert_each_run_once(runs, every)

    # Kill the active beat just after a send (give it a moment to record last_run_at).
    last = runs[-1][0]
    wait_until(lambda: time.time() > last + 1, timeout=10, what="a second to pass")
    active.process.send(signal.SIGKILL)
    active.process.wait(10)
    after = wait_for_runs(fleet, len(runs) + 2, standby, timeout=90)
    assert standby.sends(), "the standby never took over"
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(after)]
    assert min(gaps) > every * 0.85, f"a run was repeated on takeover: gaps {gaps}"
    assert_each_run_once(after, every)
