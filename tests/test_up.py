"""`celery-fleet up` as a user runs it: the whole fleet as real processes, Ctrl-C, and again.

Ctrl-C is what a terminal does: SIGINT to the whole foreground process group (here a group the
test creates, with `up` as its leader or as a child of a shell in it), never to one PID.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import psutil
import redis

from celery_fleet.local.redis_server import RedisServer
from celery_fleet.local.waiting import free_port, wait_until
from tests.support.fleet import EXAMPLE, EXAMPLE_DIR

#: Short timings: a 2 s drain window; visibility timeout = time limit + 30 s = 40 s.
TIMINGS = ["--drain-window", "2", "--time-limit", "10", "--soft-time-limit", "8"]


def up_argv(data_dir: Path, port: int, redis_port: int, *options: str) -> list[str]:
    return [
        sys.executable, "-m", "celery_fleet.cli", "up",
        "--port", str(port), "--redis-port", str(redis_port), "--data-dir", str(data_dir), *options,
    ]  # fmt: skip


def up_env(step_delay: float = 0.01) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "CELERY_", "DJANGO_"))}
    # The example project, named as a user names theirs: the queues come from what its app declares.
    env.update(
        JOBS_STEP_DELAY=str(step_delay), CELERY_FLEET_APP=EXAMPLE.celery_app, PYTHONPATH=str(EXAMPLE_DIR)
    )
    return env


def start_in_own_group(argv: Sequence[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A new process group with ``argv`` as its leader, as a shell starts a foreground job."""
    return subprocess.Popen(
        list(argv), stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def ctrl_c(group_leader: subprocess.Popen[bytes]) -> float:
    """The terminal's Ctrl-C: SIGINT to every process of the foreground group; when it was sent."""
    os.killpg(group_leader.pid, signal.SIGINT)
    return time.monotonic()


def ready(url: str, log: Path, timeout: float = 120) -> None:
    """Up as a user sees it: the web answers and `up` has printed where everything is."""
    wait_until(
        lambda: (
            httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            and "Ctrl-C stops the fleet gracefully" in log.read_text()
        ),
        timeout=timeout,
        what="fleet up",
    )


def submit(url: str, total: int) -> dict[str, str]:
    response = httpx.post(f"{url}/api/jobs/", json={"kind": "random_users", "total": total}, timeout=10)
    assert response.status_code == 202, response.text
    job: dict[str, str] = response.json()
    return job


def fleet_lines(log: str) -> list[str]:
    """The fleet's own lines (``celery-fleet | ...``), without the prefix."""
    return [line.split("| ", 1)[1] for line in log.splitlines() if line.startswith("celery-fleet ")]


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def still_running(processes: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(process)
        except psutil.NoSuchProcess:
            continue
    return left


def test_up_runs_the_fleet_stops_gracefully_and_keeps_queued_work(tmp_path: Path) -> None:
    port, redis_port, exporter_port = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    log = tmp_path / "up.log"
    options = ["--no-autoscale", "--no-beat", "--exporter-port", str(exporter_port), *TIMINGS]

    # First run: no worker on the user-jobs queue, so the job waits in Redis.
    first = start_in_own_group(up_argv(data, port, redis_port, "--workers", "0", *options), log, up_env())
    try:
        ready(url, log)
        text = log.read_text()
        assert "workers:   default=0, exports=1, periodic=1" in text
        job = submit(url, 50)
        assert httpx.get(job["url"], timeout=5).json()["state"] == "PENDING"
        bad = httpx.post(f"{url}/api/jobs/", json={"kind": "no-such-kind"}, timeout=10)
        assert bad.status_code == 400
        children = descendants(first.pid)
        assert len(children) >= 4  # redis, web (+ its workers), two workers, exporter
        exporter = next(c for c in children if "exporter" in c.cmdline())
        listening = wait_until(
            lambda: [c.laddr for c in exporter.net_connections() if c.status == psutil.CONN_LISTEN],
            timeout=30,
            what="the exporter to listen",
        )
        assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", exporter_port)]
    finally:
        stop_sent = ctrl_c(first)
        assert first.wait(60) == 0, log.read_text()[-3000:]
    stop_took = time.monotonic() - stop_sent
    assert not still_running(children), f"processes left behind: {still_running(children)}"
    assert (data / "redis" / "appendonlydir").exists()

    text = log.read_text()
    said = fleet_lines(text)
    # A log for a person: what started, in one line each; no banners, no root warning.
    assert "worker exports-1 started" in text
    assert re.search(r"database migrated: \d+ migrations applied in", text)
    assert "[queues]" not in text
    assert "SecurityWarning" not in text
    assert "Hitting Ctrl+C again" not in text
    # The 400 once: gunicorn's access line, no second line from Django.
    assert len([line for line in text.splitlines() if '"POST /api/jobs/ HTTP/1.1" 400' in line]) == 1
    assert "Bad Request" not in text
    # Redis last; the last line says how long the stop took.
    assert [i for i, line in enumerate(said) if line.startswith("worker ") and "drain" in line]
    drained = max(i for i, line in enumerate(said) if "stopped after a" in line)
    assert drained < said.index(next(line for line in said if line.startswith("redis-server stopped")))
    took = re.fullmatch(r"stopped in (\d+\.\d) s", said[-1])
    assert took, said[-3:]
    assert float(took.group(1)) <= stop_took

    # An admin account on the data `up` uses (its SQLite, its generated SECRET_KEY).
    manage = [sys.executable, "-m", "celery_fleet.cli", "manage", "--data-dir", str(data)]
    created = subprocess.run(
        [*manage, "createsuperuser", "--no-input", "--username", "boss", "--email", "boss@example.com"],
        env={**up_env(), "DJANGO_SUPERUSER_PASSWORD": "a-long-admin-password-1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr

    # Second run on the same data folder, verbose: the queued job is still there and now runs.
    log = tmp_path / "up-again.log"
    second = start_in_own_group(
        up_argv(data, port, redis_port, "--workers", "1", "--verbose", *options), log, up_env()
    )
    try:
        done = wait_until(
            lambda: (j := httpx.get(job["url"], timeout=5).json())["state"] == "SUCCESS" and j,
            timeout=120,
            what="the job queued before the restart to finish",
        )
        assert done["result"]["created"] == 50
        with httpx.Client(base_url=url, timeout=10) as browser:
            login = browser.get("/admin/login/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
            assert token
            answer = browser.post(
                "/admin/login/?next=/admin/",
                data={
                    "csrfmiddlewaretoken": token.group(1),
                    "username": "boss",
                    "password": "a-long-admin-password-1",
                },
            )
            assert answer.status_code == 302
            assert answer.headers["location"] == "/admin/"
    finally:
        ctrl_c(second)
        assert second.wait(60) == 0
    second_run = log.read_text()
    assert "[queues]" in second_run  # --verbose: Celery's banner is back
    assert "createsuperuser" in next(line for line in fleet_lines(second_run) if line.startswith("admin:"))


def test_ctrl_c_to_the_process_group_mid_job_leaves_no_job_frozen_after_the_next_start(
    tmp_path: Path,
) -> None:
    port, redis_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    log = tmp_path / "up.log"
    # A visibility timeout of 90 s: a job not requeued at the stop stays frozen that long.
    common = ["--no-beat", "--exporter-port", "0", "--drain-window", "2", "--time-limit", "60"]
    common += ["--soft-time-limit", "50"]
    scaling = ["--workers", "1", "--max-workers", "2", "--autoscale-interval", "1"]
    # As `make up` runs it: `up` is a child of the group's leader (here a shell), not the leader.
    shell = ["bash", "-c", '"$@"; echo "up exited with status $?"', "bash"]
    first = start_in_own_group(
        [*shell, *up_argv(data, port, redis_port, *scaling, *common)], log, up_env(step_delay=0.5)
    )
    jobs: list[dict[str, str]] = []
    try:
        ready(url, log)
        jobs = [submit(url, 300) for _ in range(3)]  # ~15 s each; 3 waiting: the autoscaler adds one
        wait_until(
            lambda: re.search(r"autoscaler +\| default: 1 → 2 workers", log.read_text()),
            timeout=60,
            what="the autoscaler's step",
        )

        def running() -> list[str]:
            states = [httpx.get(j["url"], timeout=5).json() for j in jobs]
            return [s["id"] for s in states if s["state"] == "PROGRESS" and 0 < int(s["progress"]) < 70]

        interrupted = wait_until(lambda: len(r := running()) == 2 and r, timeout=90, what="two jobs mid-run")
        children = descendants(first.pid)
    finally:
        ctrl_c(first)
        assert first.wait(90) == 0, log.read_text()[-3000:]
        stopped = time.monotonic()
    assert not still_running(children), f"processes left behind: {still_running(children)}"
    text = log.read_text()
    assert "up exited with status 0" in text
    said = fleet_lines(text)
    assert "; --workers 1 was the starting point" in text
    assert "Traceback" not in text
    assert said[-2].startswith("redis-server stopped")
    assert re.fullmatch(r"stopped in \d+\.\d s", said[-1])
    drains = [int(m) for m in re.findall(r"worker default-\d stopped after a (\d+) s drain", text)]
    assert len(drains) == 2
    assert max(drains) <= 2 + 5  # the window, and Celery's exit after it

    # What Redis kept (its append-only file, read by a redis-server of our own): every job's
    # message back in its queue, none left held for a worker that is gone.
    assert queued_jobs(data) == sorted(j["id"] for j in jobs)

    # The next start: so they run again at once (left held, they would sit frozen at PROGRESS
    # until the visibility timeout, 90 s after their delivery, ~80 s after the stop).
    log = tmp_path / "up-again.log"
    second = start_in_own_group(
        up_argv(data, port, redis_port, "--workers", "2", "--no-autoscale", *common), log, up_env()
    )
    try:
        for job in jobs:
            wait_until(
                lambda j=job: httpx.get(j["url"], timeout=5).json()["state"] == "SUCCESS",
                timeout=max(1.0, stopped + 50 - time.monotonic()),
                what=f"job {job['id']} to finish within 50 s of the stop",
            )
        for job_id in interrupted:
            again = httpx.get(f"{url}/api/jobs/{job_id}", timeout=5).json()
            assert again["attempts"] == 2, again  # it really was cut off and run again
        wait_until(lambda: client_unacked(redis_port) == 0, timeout=30, what="every message acknowledged")
    finally:
        ctrl_c(second)
        assert second.wait(60) == 0


def queued_jobs(data: Path) -> list[str]:
    """The job ids of the messages in the ``default`` queue of a stopped fleet's Redis."""
    server = RedisServer(data_dir=data / "redis", port=free_port()).start()
    client = redis.Redis(port=server.port)
    try:
        assert client.hlen("unacked") == 0
        messages = [json.loads(raw) for raw in client.lrange("default", 0, -1)]
        return sorted(json.loads(base64.b64decode(m["body"]))[0][0] for m in messages)
    finally:
        client.close()
        server.stop()


def client_unacked(redis_port: int) -> int:
    client = redis.Redis(port=redis_port)
    try:
        return int(client.hlen("unacked"))
    finally:
        client.close()


def test_up_restarts_a_killed_redis_server_and_queued_work_survives(tmp_path: Path) -> None:
    port, redis_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "up.log"
    options = ["--workers", "1", "--no-autoscale", "--no-beat", "--exporter-port", "0", *TIMINGS]
    fleet = start_in_own_group(up_argv(tmp_path / "data", port, redis_port, *options), log, up_env(0.3))
    client = redis.Redis(port=redis_port, socket_timeout=5)
    try:
        ready(url, log)
        jobs = [submit(url, 100) for _ in range(3)]  # ~3 s each, one worker: two wait in the queue
        wait_until(
            lambda: httpx.get(jobs[0]["url"], timeout=5).json()["state"] == "PROGRESS",
            timeout=60,
            what="the first job to run",
        )
        assert client.llen("default") == 2  # what is queued when Redis dies
        broker = next(p for p in descendants(fleet.pid) if p.name() == "redis-server")
        broker.kill()
        wait_until(
            lambda: "redis-server was killed by SIGKILL; restarting" in log.read_text(),
            timeout=30,
            what="the fleet to notice",
        )
        wait_until(lambda: "redis-server is back on" in log.read_text(), timeout=30, what="redis-server back")
        assert next(p for p in descendants(fleet.pid) if p.name() == "redis-server").pid != broker.pid
        later = submit(url, 50)  # the fleet goes on
        for job in [*jobs, later]:
            wait_until(
                lambda j=job: httpx.get(j["url"], timeout=5).json()["state"] == "SUCCESS",
                timeout=120,
                what=f"job {job['id']} to finish",
            )
    finally:
        client.close()
        ctrl_c(fleet)
        assert fleet.wait(60) == 0, log.read_text()[-3000:]


def test_up_replaces_a_crashed_worker_and_restarts_a_crashing_service_with_a_growing_delay(
    tmp_path: Path,
) -> None:
    port, redis_port, exporter_port = free_port(), free_port(), free_port()
    log = tmp_path / "up.log"
    options = ["--workers", "1", "--no-autoscale", "--no-beat", "--exporter-port", str(exporter_port)]
    fleet = start_in_own_group(
        up_argv(tmp_path / "data", port, redis_port, *options, *TIMINGS), log, up_env()
    )
    try:
        ready(f"http://127.0.0.1:{port}", log)

        def children(word: str) -> list[psutil.Process]:
            return [p for p in psutil.Process(fleet.pid).children() if word in " ".join(p.cmdline())]

        victim = wait_until(lambda: children("default-"), timeout=30, what="the default worker")[0]
        victim.kill()
        replacement = wait_until(
            lambda: [p for p in children("default-") if p.pid != victim.pid],
            timeout=30,
            what="a replacement worker",
        )
        assert len(replacement) == 1
        assert re.search(
            r"worker default-1 was killed by SIGKILL; starting a replacement( in 1 s)?\n", log.read_text()
        )
        assert "worker default-2 started" in log.read_text()

        # A service that dies again and again right after its start comes back ever more slowly.
        for kill in range(3):
            exporter = wait_until(lambda: children(" exporter "), timeout=60, what="the exporter")[0]
            exporter.kill()
            wait_until(
                lambda n=kill: log.read_text().count("exporter was killed by SIGKILL after") == n + 1,
                timeout=60,
                what="the fleet to notice",
            )
        delays = [
            int(d)
            for d in re.findall(
                r"exporter was killed by SIGKILL after \d+ s; restarting in (\d+) s", log.read_text()
            )
        ]
        assert delays[-2:] in ([1, 2], [2, 4]), delays  # the first kill may come 10 s after its start
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{exporter_port}/metrics", timeout=2).status_code == 200,
            timeout=60,
            what="the exporter back",
        )
    finally:
        ctrl_c(fleet)
        assert fleet.wait(60) == 0
