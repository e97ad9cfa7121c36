"""The job row is the source of truth: over HTTP, with a real Redis that hangs, crashes and
forgets, a 503 means the job never runs, a 202 means it runs once, an Idempotency-Key makes a
retried POST return the first job, and the outbox sweep publishes again what the broker lost."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from celery_fleet import outbox
from celery_fleet.local.processes import ManagedProcess
from celery_fleet.local.redis_server import RedisServer
from celery_fleet.local.waiting import free_port, wait_until
from celery_fleet.timings import Timings
from tests.support.fleet import Fleet, base_env, migrate
from tests.support.ledger import read_jobs, read_runs
from tests.support.rabbitmq import RabbitMQServer, skip_unless_installed

TIMINGS_ENV = {
    "CELERY_TASK_SOFT_TIME_LIMIT": "8",
    "CELERY_TASK_TIME_LIMIT": "10",
    "CELERY_FLEET_DRAIN_WINDOW": "2",
    "GUNICORN_TIMEOUT": "90",
}
TIMINGS = Timings(soft_time_limit=8, time_limit=10, drain_window=2)
BOUND = outbox.republish_after(TIMINGS)
SWEEP_EVERY = 1.0
#: A publish to a hung Redis gives up after at most three of the preset's 15 s socket timeouts
#: (the publish, the retry's connection check, the retry), plus slack for a loaded machine.
HUNG_PUBLISH = 3 * 15 + 15


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(data_dir=tmp_path / "redis", port=free_port(), appendonly=True).start()
    yield server
    if server.process is not None:
        server.process.send_signal(signal.SIGCONT)
    server.stop()


@pytest.fixture
def fleet(tmp_path: Path, own_redis: RedisServer) -> Iterator[Fleet]:
    env = base_env(tmp_path, own_redis.url, **TIMINGS_ENV)
    migrate(env)
    running = Fleet(data_dir=tmp_path, env=env, log_path=tmp_path / "fleet.log")
    yield running
    if own_redis.process is not None:
        own_redis.process.send_signal(signal.SIGCONT)
    running.stop_all()
    print(running.logs()[-6000:])


def post(url: str, body: dict[str, object], key: str | None = None, timeout: float = 10) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return httpx.post(f"{url}/api/jobs/", json=body, headers=headers, timeout=timeout)


def start_sweeper(fleet: Fleet) -> ManagedProcess:
    from celery_fleet import roles

    return fleet.start("sweeper", roles.manage_argv("sweep_outbox", "--every", str(SWEEP_EVERY)))


def own_redis_client(server: RedisServer) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port, socket_timeout=5)


def db(fleet: Fleet) -> Path:
    return fleet.data_dir / "db.sqlite3"


def test_the_outbox_bound_comes_from_the_timings() -> None:
    assert BOUND == TIMINGS.effective_grace_period == 12
    assert outbox.republish_after(Timings()) == 40  # the defaults: 30 s drain + 10 s
    assert outbox.sweep_interval(TIMINGS) == 6


def test_an_idempotency_key_returns_the_first_job(fleet: Fleet) -> None:
    url = fleet.start_web()
    body = {"kind": "timed_work", "seconds": 0.1}
    first = post(url, body, key="order-42")
    again = post(url, body, key="order-42")
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert len(read_jobs(db(fleet))) == 1
    other = post(url, {"kind": "timed_work", "seconds": 0.2}, key="order-42")
    assert other.status_code == 409
    assert "different request" in other.json()["error"]
    for bad in (b"", b"x" * 201, b"has space", "naïve".encode()):
        response = httpx.post(f"{url}/api/jobs/", json=body, headers={"Idempotency-Key": bad}, timeout=10)
        assert response.status_code == 400, bad
    assert post(url, body).json()["id"] != first.json()["id"], "no key: a new job every time"


def test_a_hung_broker_answers_503_and_that_job_never_runs(fleet: Fleet, own_redis: RedisServer) -> None:
    url = fleet.start_web(extra_env={"WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "4"})
    fleet.start_worker(("default",), extra_env=TIMINGS_ENV)
    # A warm connection, as a busy web has: its publish reaches Redis's socket and waits there.
    assert post(url, {"kind": "timed_work", "seconds": 0.1}, key="warm-up").status_code == 202
    assert own_redis.process is not None
    own_redis.process.send_signal(signal.SIGSTOP)
    answers: dict[str, httpx.Response] = {}

    def submit(key: str) -> None:
        answers[key] = post(url, {"kind": "timed_work", "seconds": 0.1}, key=key, timeout=HUNG_PUBLISH + 30)

    clients = [threading.Thread(target=submit, args=(f"hung-{i}",)) for i in range(3)]
    began = time.monotonic()
    for client in clients:
        client.start()
    for client in clients:
        client.join(HUNG_PUBLISH + 40)
    waited = time.monotonic() - began
    own_redis.process.send_signal(signal.SIGCONT)
    assert sorted(r.status_code for r in answers.values()) == [503, 503, 503], answers
    assert waited < HUNG_PUBLISH, f"the API took {waited:.0f}s to give up on a hung broker"
    refused = [j for j in read_jobs(db(fleet)).values() if j.state == "FAILURE"]
    assert len(refused) == 3
    assert all(j.error.startswith("not accepted") and j.idempotency_key is None for j in refused)
    # The publishes sat in Redis's socket buffer: once it resumes they arrive, and the worker must
    # find those jobs refused and do nothing (today's bug: they ran after a 503).
    refused_ids = {j.id for j in refused}
    wait_until(
        lambda: any(key in refused_ids for key in read_runs(db(fleet))),
        timeout=60,
        what="a late publish of a refused job to reach the worker",
    )
    # A client retrying with the same key gets a new job that runs (the refused one freed the key).
    retried = post(url, {"kind": "timed_work", "seconds": 0.1}, key="hung-0")
    assert retried.status_code == 202
    wait_until(
        lambda: (
            read_runs(db(fleet)).get(retried.json()["id"])
            and read_runs(db(fleet))[retried.json()["id"]].effects
        ),
        timeout=60,
        what="the retried job to run",
    )
    client = own_redis_client(own_redis)
    wait_until(
        lambda: client.llen("default") == 0 and client.hlen("unacked") == 0,
        timeout=60,
        what="every late message to be handled",
    )
    runs = read_runs(db(fleet))
    for job in refused:
        run = runs.get(job.id)
        assert run is None or (run.starts, run.effects) == (0, 0), f"refused job {job.id} ran: {run}"


def test_jobs_a_broker_forgot_are_published_again_by_the_outbox(fleet: Fleet, own_redis: RedisServer) -> None:
    url = fleet.start_web()
    ids = [
        post(url, {"kind": "timed_work", "seconds": 0.1}, key=f"forgot-{i}").json()["id"] for i in range(5)
    ]
    assert own_redis.process is not None
    # The broker loses what it held: SIGKILL, and it comes back without its data (a Redis pod
    # without a persistent volume; a node crash inside the fsync window loses the same way).
    own_redis.process.send_signal(signal.SIGKILL)
    own_redis.process.wait(10)
    shutil.rmtree(own_redis.data_dir)
    own_redis.start()
    restarted = time.monotonic()
    fleet.start_worker(("default",), extra_env=TIMINGS_ENV)
    start_sweeper(fleet)
    wait_until(
        lambda: all((run := read_runs(db(fleet)).get(i)) and run.effects for i in ids),
        timeout=BOUND + 60,
        what="the outbox to publish the forgotten jobs again",
    )
    recovered = time.monotonic() - restarted
    jobs = read_jobs(db(fleet))
    runs = read_runs(db(fleet))
    assert [(jobs[i].republishes, runs[i].effects, runs[i].starts) for i in ids] == [(1, 1, 1)] * 5
    print(f"outbox recovered 5 forgotten jobs {recovered:.1f}s after the broker came back (bound {BOUND}s)")
    assert recovered < BOUND + 6 * SWEEP_EVERY + 15


def test_a_web_killed_mid_submit_loses_nothing(fleet: Fleet, own_redis: RedisServer) -> None:
    port = free_port()
    url = fleet.start_web(port=port, extra_env={"WEB_CONCURRENCY": "1"})
    web = fleet.processes[-1]
    assert own_redis.process is not None
    own_redis.process.send_signal(signal.SIGSTOP)  # the publish hangs after the row is committed
    answer: list[object] = []
    client = threading.Thread(
        target=lambda: answer.append(_post_or_error(url, {"kind": "timed_work", "seconds": 0.1}, "midway"))
    )
    client.start()
    wait_until(lambda: len(read_jobs(db(fleet))) == 1, timeout=30, what="the job row to be committed")
    os.killpg(web.pid, signal.SIGKILL)  # the pod dies mid-request
    client.join(30)
    assert isinstance(answer[0], httpx.HTTPError), f"the client got an answer: {answer}"
    # The broker dies as well before it read the publish from its socket: the message is nowhere.
    own_redis.process.send_signal(signal.SIGKILL)
    own_redis.process.wait(10)
    own_redis.start()
    url = fleet.start_web(port=port)
    fleet.start_worker(("default",), extra_env=TIMINGS_ENV)
    start_sweeper(fleet)
    [job] = read_jobs(db(fleet)).values()
    assert job.state == "PENDING"
    retried = post(url, {"kind": "timed_work", "seconds": 0.1}, key="midway")
    assert retried.status_code == 202
    assert retried.json()["id"] == job.id, "the retry returns the job the dead request committed"
    wait_until(
        lambda: (run := read_runs(db(fleet)).get(job.id)) and run.effects,
        timeout=BOUND + 60,
        what="the outbox to publish the job the dead web never published",
    )
    assert read_runs(db(fleet))[job.id].effects == 1
    assert len(read_jobs(db(fleet))) == 1


@pytest.fixture(params=["redis", "rabbitmq"])
def any_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "redis":
        server: RedisServer | RabbitMQServer = RedisServer(data_dir=tmp_path / "redis", port=free_port())
    else:
        skip_unless_installed()
        server = RabbitMQServer(data_dir=tmp_path / "rabbitmq")
    server.start()
    yield server.url
    server.stop()


def test_the_request_records_its_publish_only_where_the_sweep_needs_the_record(
    tmp_path: Path, any_broker: str
) -> None:
    """On Redis the sweep looks into the broker, so the request writes nothing after its publish
    (no UPDATE per enqueue); on RabbitMQ the broker's confirm is the sweep's only evidence, so the
    request records it.  Either way a job the broker holds is left alone past the bound, and a job
    committed but never published (its web died in between) is published again."""
    from celery_fleet import roles

    env = base_env(tmp_path, any_broker, **TIMINGS_ENV)
    migrate(env)
    fleet = Fleet(data_dir=tmp_path, env=env, log_path=tmp_path / "fleet.log")
    try:
        url = fleet.start_web()
        accepted = post(url, {"kind": "timed_work", "seconds": 0.1}).json()["id"]
        # Written as submit_job writes its row, then nothing: the web died before its publish.
        made = subprocess.run(
            roles.manage_argv(
                "shell",
                "-c",
                "from jobs.models import Job; "
                "print(Job.objects.create(kind='timed_work', params={'seconds': 0.1}).id)",
            ),
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        unpublished = str(uuid.UUID(made.stdout.split()[-1]))
        row = read_jobs(db(fleet))[accepted]
        if any_broker.startswith("redis"):
            assert row.published_at is None, "on Redis the request records nothing after its publish"
        else:
            assert row.published_at is not None, "on RabbitMQ the request records the broker's confirm"
        # No worker yet: the accepted job waits on the broker past the bound, under the sweep's eyes.
        start_sweeper(fleet)
        wait_until(
            lambda: read_jobs(db(fleet))[unpublished].republishes == 1,
            timeout=BOUND + 60,
            what="the sweep to publish the job that was never published",
        )
        waited = read_jobs(db(fleet))[accepted]
        assert waited.republishes == 0, "the sweep published again a job the broker held"
        fleet.start_worker(("default",), extra_env=TIMINGS_ENV)
        wait_until(
            lambda: all(
                (run := read_runs(db(fleet)).get(i)) and run.effects for i in (accepted, unpublished)
            ),
            timeout=60,
            what="both jobs to run",
        )
        runs = read_runs(db(fleet))
        assert [(runs[i].effects, runs[i].starts) for i in (accepted, unpublished)] == [(1, 1)] * 2
    finally:
        fleet.stop_all()
        print(fleet.logs()[-4000:])


def _post_or_error(url: str, body: dict[str, object], key: str) -> object:
    try:
        return post(url, body, key=key, timeout=60)
    except httpx.HTTPError as exc:
        return exc


def test_which_jobs_are_lost_pure_logic() -> None:
    quiet, recent = 1000.0, 1000.0 + BOUND - 1
    now = 1000.0 + BOUND
    jobs = [
        outbox.Pending("queued", "default", quiet, published=True),
        outbox.Pending("held", "exports", quiet, published=True),
        outbox.Pending("gone", "exports", quiet, published=True),
        outbox.Pending("never-published", "exports", quiet, published=False),
        outbox.Pending("recent", "exports", recent, published=False),
    ]
    view = outbox.BrokerView(waiting={"default": 3, "exports": 1}, seen_ids=frozenset({"queued", "held"}))
    assert [j.task_id for j in outbox.lost(jobs, view, now=now, bound=BOUND)] == ["gone", "never-published"]
    # Too many messages to look through: nothing is published again until the backlog shrinks.
    blind = outbox.BrokerView(waiting={"default": 30_000}, complete=False)
    assert outbox.lost(jobs, blind, now=now, bound=BOUND) == []
    # RabbitMQ cannot be looked into: only what was never confirmed is published again.
    assert [j.task_id for j in outbox.lost(jobs, None, now=now, bound=BOUND)] == ["never-published"]
