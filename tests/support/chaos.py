"""Faults as life has them, against a whole fleet, with every job counted.

One :func:`run` starts a broker of its own (Redis with its append-only file, or RabbitMQ
with quorum queues), a TCP proxy between every fleet process and the broker, gunicorn,
workers and the outbox sweeper; clients submit ``timed_work`` jobs over HTTP with an
``Idempotency-Key`` (retrying on 503 and on errors, as a careful client does) while faults
are injected at random moments:

* workers: SIGTERM (drain), SIGKILL of the whole process group (a pod kill), SIGKILL of a
  pool child (the OOM killer), SIGSTOP for a few seconds;
* the broker: SIGKILL then restart on the same data; on Redis also a *node* crash, which
  loses what the append-only file had not fsynced yet (the file is cut back to its size of
  a second before: ``appendfsync everysec``); SIGSTOP for up to ~20 s (a hung server:
  publishes time out, the API answers 503);
* the network: every connection cut at once, and a connection cut exactly while a
  worker's pop reply is in flight (the proxy drops the reply carrying a chosen job);
* the web: SIGKILL of gunicorn mid-submit, then a restart.

Then it waits until every accepted job took effect and reads the ledger: lost and doubled
effects, refused jobs that ran anyway, duplicate runs against what the faults explain,
and how long redeliveries took.  ``tests/test_fault_injection.py`` asserts on one result;
``bench/soak.py`` runs many seeds and prints the table.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import psutil

from celery_fleet import roles
from celery_fleet.local.processes import ManagedProcess
from celery_fleet.local.redis_server import RedisServer
from celery_fleet.local.waiting import free_port
from tests.support.fleet import Fleet, base_env, migrate
from tests.support.ledger import JobRow, Run, read_jobs, read_runs
from tests.support.rabbitmq import RabbitMQServer, rabbitmq_binary
from tests.support.tcp_proxy import TcpProxy

#: Short limits so a run takes minutes; the same rules as production (celery_fleet.timings).
TIMINGS_ENV = {
    "CELERY_TASK_SOFT_TIME_LIMIT": "8",
    "CELERY_TASK_TIME_LIMIT": "10",
    "CELERY_FLEET_DRAIN_WINDOW": "2",
}
VISIBILITY = 10 + 30  # time limit + margin, as celery_fleet.timings derives it
SOCKET_TIMEOUT = 15  # celery_fleet.presets: a command on a hung broker fails after this
GRACE = 2 + 10
OUTBOX_BOUND = GRACE  # celery_fleet.outbox.republish_after
DURATIONS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0)
WEIGHTS = (25, 20, 20, 15, 10, 6, 4)

WORKER_FAULTS = ("worker_sigterm", "worker_sigkill", "child_sigkill", "worker_sigstop")
BROKER_FAULTS = ("broker_sigkill", "broker_node_crash", "broker_sigstop")
#: Faults that only make sense on one broker.
REDIS_ONLY = frozenset({"broker_node_crash"})
NETWORK_FAULTS = ("tcp_cut_all", "tcp_cut_pop")
WEB_FAULTS = ("web_sigkill",)
ALL_FAULTS = WORKER_FAULTS + BROKER_FAULTS + NETWORK_FAULTS + WEB_FAULTS


@dataclass(frozen=True)
class Config:
    seed: int
    broker: str = "redis"  # or "rabbitmq"
    workers: int = 4
    injections: int = 10
    jobs: int = 200
    #: Seconds between injections (uniform), the chaos pacing.
    pace: tuple[float, float] = (1.0, 2.5)
    faults: tuple[str, ...] = ALL_FAULTS
    clients: int = 4


@dataclass(frozen=True)
class Injection:
    kind: str
    at: float
    #: The fault hit work in flight: the victim (or any worker, for broker and network faults)
    #: held a task, or the cut reply carried a message.
    busy: bool
    #: Most extra runs of a job this fault can explain.
    explains: int
    note: str = ""


@dataclass
class Result:
    config: Config
    injections: list[Injection]
    accepted: dict[str, str]  # idempotency key -> job id that answered 202
    refused: list[str]  # job ids that answered 503
    jobs: dict[str, JobRow]
    runs: dict[str, Run]
    drains: list[float]
    settle_seconds: float
    log_path: Path
    settled: bool = True
    errors: list[str] = field(default_factory=list)
    killed_at_grace: int = 0
    #: What the broker says about itself at the end (RabbitMQ: each queue's type).
    broker_facts: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def run_of(self, job_id: str) -> Run:
        return self.runs.get(job_id) or Run(job_id, 0, 0, 0)

    @property
    def lost(self) -> list[str]:
        return sorted(j for j in self.accepted.values() if self.run_of(j).effects == 0)

    @property
    def doubled(self) -> list[str]:
        return sorted(j for j in self.accepted.values() if self.run_of(j).effects > 1)

    @property
    def refused_but_ran(self) -> list[str]:
        return sorted(j for j in self.refused if self.run_of(j).starts or self.run_of(j).effects)

    @property
    def duplicate_runs(self) -> int:
        return sum(max(self.run_of(j).starts - 1, 0) for j in self.accepted.values())

    @property
    def redelivered(self) -> int:
        """Jobs whose message was delivered more than once (a second run, or a delivery that skipped)."""
        return sum(1 for j in self.accepted.values() if self.run_of(j).deliveries > 1)

    @property
    def republished(self) -> int:
        return sum(self.jobs[j].republishes for j in self.accepted.values() if j in self.jobs)

    @property
    def explained(self) -> int:
        return sum(i.explains for i in self.injections) + self.republished

    @property
    def busy_hits(self) -> int:
        return sum(1 for i in self.injections if i.busy)

    def redelivery_delays(self) -> list[float]:
        """For each interrupted run: seconds from the fault that interrupted it to the next start."""
        faults = sorted(i.at for i in self.injections)
        delays = []
        for job_id in self.accepted.values():
            starts = self.run_of(job_id).start_times
            for began, again in itertools.pairwise(starts):
                hits = [t for t in faults if began <= t <= again]
                delays.append(again - (hits[0] if hits else began))
        return delays

    def by_kind(self) -> Counter[str]:
        return Counter(i.kind for i in self.injections)

    def summary(self) -> str:
        delays = self.redelivery_delays()
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.by_kind().items()))
        return (
            f"seed {self.config.seed} on {self.config.broker}: {len(self.accepted)} jobs, "
            f"{len(self.injections)} injections ({kinds}), {self.busy_hits} hit busy work\n"
            f"  lost {len(self.lost)}, doubled effects {len(self.doubled)}, refused-but-ran "
            f"{len(self.refused_but_ran)}, refused (503) {len(self.refused)}\n"
            f"  duplicate runs {self.duplicate_runs} (faults explain up to {self.explained}), "
            f"redelivered {self.redelivered}, republished by the outbox {self.republished}\n"
            f"  worst redelivery delay {max(delays, default=0):.1f}s, drains "
            f"{', '.join(f'{d:.1f}' for d in self.drains) or '-'}"
            + (f" (median {statistics.median(self.drains):.1f}s)" if self.drains else "")
            + (
                f", {self.killed_at_grace} SIGKILLed at the grace period (broker hung)"
                if self.killed_at_grace
                else ""
            )
            + f", settled in {self.settle_seconds:.0f}s"
        )


class Broker:
    """The broker of one run, behind a TCP proxy that the fleet connects through."""

    def __init__(self, kind: str, data_dir: Path) -> None:
        self.kind = kind
        self.redis: RedisServer | None = None
        self.rabbit: RabbitMQServer | None = None
        if kind == "redis":
            self.redis = RedisServer(data_dir=data_dir / "redis", port=free_port(), appendonly=True)
        else:
            self.rabbit = RabbitMQServer(data_dir=data_dir / "rabbitmq")
        self.proxy = TcpProxy("127.0.0.1", self.port)
        self._aof_sizes: list[tuple[float, Path, int]] = []

    @property
    def port(self) -> int:
        return self.redis.port if self.redis else self.rabbit.port  # type: ignore[union-attr]

    @property
    def url(self) -> str:
        """What the fleet uses: through the proxy."""
        if self.redis:
            return self.proxy.url("redis", "/0")
        return self.proxy.url("amqp", "//").replace("amqp://", "amqp://guest:guest@")

    def start(self) -> Broker:
        if self.redis:
            self.redis.start()
        else:
            self.rabbit.start()  # type: ignore[union-attr]
        self.proxy.start()
        return self

    def popen(self) -> Any:
        return self.redis.process if self.redis else self.rabbit.process  # type: ignore[union-attr]

    def signal(self, sig: int) -> None:
        process = self.popen()
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig) if self.rabbit else process.send_signal(sig)

    def sample_aof(self) -> None:
        """Remember the AOF's size now (a thread calls this a few times a second)."""
        path = self._incr_aof()
        if path is not None:
            with contextlib.suppress(OSError):
                self._aof_sizes.append((time.monotonic(), path, path.stat().st_size))
                del self._aof_sizes[:-50]

    def _incr_aof(self) -> Path | None:
        if self.redis is None:
            return None
        files = sorted(
            (self.redis.data_dir / "appendonlydir").glob("*.incr.aof"), key=lambda p: p.stat().st_mtime
        )
        return files[-1] if files else None

    def lose_unsynced_tail(self, window: float = 1.0) -> int:
        """Cut the current AOF back to its size ``window`` seconds ago (after the process died)."""
        path = self._incr_aof()
        if path is None:
            return 0
        old = [size for at, p, size in self._aof_sizes if p == path and at <= time.monotonic() - window]
        if not old:
            return 0
        size = path.stat().st_size
        if old[-1] >= size:
            # A size from before an earlier crash's cut: "truncating" to it would pad the file
            # with zero bytes, a corruption no crash makes (Redis then refuses the file).
            return 0
        with path.open("r+b") as fh:
            fh.truncate(old[-1])
        # Sizes sampled before this cut describe a file that no longer exists.
        self._aof_sizes = [sample for sample in self._aof_sizes if sample[1] != path]
        return size - old[-1]

    def restart_after_kill(self) -> None:
        """Start again on the same data, on fresh ports behind the same proxy address.

        Never on the old port: on a shared machine another test may take a freed port in the
        moment it is free, and its workers would then consume from this broker.
        """
        process = self.popen()
        if process is not None:
            process.wait(30)
        if self.redis:
            self.redis.port = free_port()
            self.redis.start()
        else:
            assert self.rabbit is not None
            self.rabbit.port, self.rabbit.dist_port = free_port(), free_port()
            self.rabbit.start(timeout=180)
        self.proxy.upstream_port = self.port

    def facts(self) -> dict[str, str]:
        if self.rabbit is None:
            return {"persistence": "appendonly everysec"}
        out = subprocess.run(
            [rabbitmq_binary("rabbitmqctl"), "list_queues", "name", "type", "--quiet", "--no-table-headers"],
            env=self.rabbit.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        ).stdout
        return {name: kind for name, kind in (line.split()[:2] for line in out.splitlines() if line.strip())}

    def stop(self) -> None:
        self.proxy.stop()
        self.signal(signal.SIGCONT)
        if self.redis:
            self.redis.stop()
        else:
            self.rabbit.stop()  # type: ignore[union-attr]


class Chaos:
    def __init__(self, config: Config, data_dir: Path) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.data_dir = data_dir
        self.broker = Broker(config.broker, data_dir)
        self.env: dict[str, str] = {}
        self.fleet: Fleet | None = None
        self.workers: list[ManagedProcess] = []
        self.web: ManagedProcess | None = None
        self.web_port = free_port()
        self.injections: list[Injection] = []
        self.drains: list[float] = []
        self.accepted: dict[str, str] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._timers: list[threading.Timer] = []
        self._threads: list[threading.Thread] = []
        self._broker_lock = threading.Lock()
        self._web_lock = threading.Lock()
        self.broker_trouble_until = 0.0
        #: SIGTERMed workers still running at the end of the grace period (only while the broker hung).
        self.killed_at_grace = 0

    # --- the fleet ----------------------------------------------------------------------
    def start(self) -> None:
        self.broker.start()
        if self.broker.redis is not None:
            self._sampler = threading.Thread(target=self._sample_aof, name="aof-sampler", daemon=True)
            self._sampler.start()
        extra = {
            **TIMINGS_ENV,
            "GUNICORN_TIMEOUT": "90",
            "JOBS_STEP_DELAY": "0.01",
            "LOG_LEVEL": "INFO",
        }
        self.env = base_env(self.data_dir, self.broker.url, **extra)
        migrate(self.env)
        self.fleet = Fleet(data_dir=self.data_dir, env=self.env, log_path=self.data_dir / "fleet.log")
        self.workers = [self.fleet.start_worker(("default",)) for _ in range(self.config.workers)]
        threading.Thread(target=self._supervise_workers, name="worker-supervisor", daemon=True).start()
        self._start_web()
        self.fleet.start("sweeper", roles.manage_argv("sweep_outbox", "--every", "2"))

    def _sample_aof(self) -> None:
        while not self._stopping.wait(0.2):
            self.broker.sample_aof()

    def _start_web(self) -> None:
        assert self.fleet is not None
        self.fleet.start_web(port=self.web_port, extra_env={"WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "4"})
        # Workers start from other threads meanwhile: the newest process named "web" is this one.
        self.web = next(p for p in reversed(self.fleet.processes) if p.name == "web")

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def _replace_worker(self, victim: ManagedProcess) -> None:
        """Keep the replica count, as a Deployment does: a new worker the moment one goes."""
        assert self.fleet is not None
        with self._lock:
            if victim not in self.workers:
                return  # replaced already (by the supervisor, once it saw the victim exit)
            self.workers.remove(victim)
        replacement = self.fleet.start_worker(("default",), wait_ready=False)
        with self._lock:
            self.workers.append(replacement)

    def _supervise_workers(self) -> None:
        """A Deployment's controller: a worker that exited on its own is replaced too (Celery
        exits with "Could not start worker processes" when a pool child is killed as it starts:
        unreplaced, such exits emptied the fleet and its jobs counted as lost)."""
        while not self._stopping.wait(1.0):
            with self._lock:
                exited = [w for w in self.workers if not w.alive()]
            for worker in exited:
                self._replace_worker(worker)

    def _background(self, name: str, action: Callable[[], None]) -> None:
        """What a fault sets off (a drain, a restart) runs beside the injector, which keeps its pace."""

        def guarded() -> None:
            try:
                action()
            except Exception as exc:  # a broken harness must fail the run, not hide
                with self._lock:
                    self.errors.append(f"{name}: {type(exc).__name__}: {exc}")

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for timer in self._timers:
            timer.cancel()
        for worker in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGCONT)
        self.broker.signal(signal.SIGCONT)
        if self.fleet is not None:
            self.fleet.stop_all()
        self.broker.stop()

    # --- the clients --------------------------------------------------------------------
    def submit(self, key: str, seconds: float, deadline: float) -> None:
        body = {"kind": "timed_work", "seconds": seconds}
        while time.monotonic() < deadline:
            try:
                response = httpx.post(
                    f"{self.web_url}/api/jobs/", json=body, headers={"Idempotency-Key": key}, timeout=120
                )
            except httpx.HTTPError:
                time.sleep(0.5)  # the web is down or the connection broke: retry with the same key
                continue
            if response.status_code == 202:
                with self._lock:
                    self.accepted[key] = response.json()["id"]
                return
            if response.status_code == 503:
                time.sleep(0.5)  # refused: the job will not run and the key is free again
                continue
            with self._lock:
                self.errors.append(f"{key}: HTTP {response.status_code} {response.text[:200]}")
            return
        with self._lock:
            self.errors.append(f"{key}: never accepted before the deadline")

    # --- the faults ---------------------------------------------------------------------
    def inject(self, kind: str) -> Injection:
        return getattr(self, f"_{kind}")()  # type: ignore[no-any-return]

    def _running(self) -> Counter[str]:
        """Jobs running now, by worker hostname (the job row records who started it)."""
        jobs = read_jobs(self.data_dir / "db.sqlite3").values()
        return Counter(j.worker for j in jobs if j.state in ("STARTED", "PROGRESS"))

    def _victim(self) -> tuple[ManagedProcess, bool]:
        alive = [w for w in self.workers if w.alive()]
        running = self._running()
        # Mostly a busy worker, as faults find them on a loaded fleet; sometimes any.
        busy = [w for w in alive if running[f"{w.name}@test"]]
        pool = busy if busy and self.rng.random() < 0.8 else alive or self.workers
        victim = self.rng.choice(pool)
        return victim, bool(running[f"{victim.name}@test"])

    def _worker_sigterm(self) -> Injection:
        victim, busy = self._victim()
        at = time.time()
        victim.send(signal.SIGTERM)
        self._replace_worker(victim)

        def drain() -> None:
            began = time.monotonic()
            if victim.wait(GRACE) is None:
                # What the kubelet does at the end of the grace period.
                _signal_group(victim, signal.SIGKILL)
                victim.wait(10)
                with self._lock:
                    self.killed_at_grace += 1
                    if at > self.broker_trouble_until:
                        self.errors.append(
                            f"{victim.name} outlived its grace period (the broker was healthy)"
                        )
            else:
                with self._lock:
                    self.drains.append(time.monotonic() - began)

        self._background(f"drain-{victim.name}", drain)
        return Injection("worker_sigterm", at, busy, explains=1, note=victim.name)

    def _worker_sigkill(self) -> Injection:
        victim, busy = self._victim()
        at = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(victim.pid, signal.SIGKILL)  # the whole pod: main process and pool children
        victim.wait(10)
        self._replace_worker(victim)
        return Injection("worker_sigkill", at, busy, explains=1, note=victim.name)

    def _child_sigkill(self) -> Injection:
        victim, busy = self._victim()
        at = time.time()
        children = []
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(victim.pid).children()
        if children:
            with contextlib.suppress(psutil.Error):
                self.rng.choice(children).kill()  # the OOM killer picks the task's process
        return Injection("child_sigkill", at, busy and bool(children), explains=1, note=victim.name)

    def _worker_sigstop(self) -> Injection:
        victim, busy = self._victim()
        at = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(victim.pid, signal.SIGSTOP)
        frozen = self.rng.uniform(1.0, 6.0)
        self._later(frozen, lambda: _signal_group(victim, signal.SIGCONT))
        return Injection("worker_sigstop", at, busy, explains=1, note=f"{victim.name} {frozen:.1f}s")

    def _broker_sigkill(self) -> Injection:
        return self._broker_crash("broker_sigkill", lose_tail=False)

    def _broker_node_crash(self) -> Injection:
        """The machine dies: the process is gone and the last second of the AOF never hit the disk."""
        return self._broker_crash("broker_node_crash", lose_tail=True)

    def _broker_crash(self, kind: str, *, lose_tail: bool) -> Injection:
        busy = self._broker_busy()
        at = time.time()
        down = self.rng.uniform(0.2, 2.0)
        self._trouble(at + down + 30 + SOCKET_TIMEOUT)

        def crash() -> None:
            with self._broker_lock:  # one restart at a time
                self.broker.signal(signal.SIGKILL)
                if lose_tail:
                    self.broker.lose_unsynced_tail()
                time.sleep(down)
                self.broker.restart_after_kill()
                self._trouble(time.time() + SOCKET_TIMEOUT)

        self._background(kind, crash)
        return Injection(kind, at, busy, explains=self.config.workers)

    def _broker_sigstop(self) -> Injection:
        busy = self._broker_busy()
        at = time.time()
        hung = self.rng.uniform(2.0, 20.0)
        self._trouble(at + hung + 30 + SOCKET_TIMEOUT)

        def hang() -> None:
            # Not serialised with crashes: a hung server killed (by a liveness probe) is life too.
            self.broker.signal(signal.SIGSTOP)
            time.sleep(hung)
            self.broker.signal(signal.SIGCONT)

        self._background("broker_sigstop", hang)
        return Injection("broker_sigstop", at, busy, explains=self.config.workers, note=f"{hung:.1f}s")

    def _trouble(self, until: float) -> None:
        """While the broker is hung or just back, a stopping worker may wait on a socket timeout."""
        self.broker_trouble_until = max(self.broker_trouble_until, until)

    def _tcp_cut_all(self) -> Injection:
        busy = self._broker_busy()
        at = time.time()
        self._trouble(at + SOCKET_TIMEOUT)
        cut = self.broker.proxy.cut_all()
        return Injection("tcp_cut_all", at, busy and cut > 0, explains=self.config.workers, note=f"{cut} cut")

    def _tcp_cut_pop(self) -> Injection:
        """Cut the connection that carries a chosen waiting job to a worker, mid-reply."""
        waiting = self._waiting_job_ids()
        at = time.time()
        if not waiting:
            return Injection("tcp_cut_pop", at, False, explains=0, note="nothing waiting")
        job_id = self.rng.choice(waiting)
        # The job id as it appears in a message's headers: a pop reply carries it so, the
        # sweeper's list of ids does not.
        self.broker.proxy.cut_on_reply(f'"id": "{job_id}"'.encode())
        return Injection("tcp_cut_pop", at, False, explains=0, note=job_id)

    def _web_sigkill(self) -> Injection:
        at = time.time()

        def kill_and_restart() -> None:
            with self._web_lock:
                assert self.web is not None
                assert self.fleet is not None
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.web.pid, signal.SIGKILL)
                self.web.wait(10)
                self._start_web()

        self._background("web_sigkill", kill_and_restart)
        return Injection("web_sigkill", at, True, explains=0)

    def _broker_busy(self) -> bool:
        return sum(self._running().values()) > 0

    def _waiting_job_ids(self) -> list[str]:
        jobs = read_jobs(self.data_dir / "db.sqlite3")
        return [j.id for j in jobs.values() if j.state == "PENDING" and j.idempotency_key]

    def _later(self, seconds: float, action: Callable[[], None]) -> None:
        timer = threading.Timer(seconds, action)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()


def _signal_group(process: ManagedProcess, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


#: A job is lost when none has taken effect for this long: a SIGKILLed worker's task is back
#: after the visibility timeout, a lost publish after the outbox bound; plus a margin.
STALL_LIMIT = VISIBILITY + OUTBOX_BOUND + 60
#: However busy the fleet, a run ends: the backlog left by the faults drains within this.
SETTLE_LIMIT = 1800


def settle_all(chaos: Chaos, db: Path) -> bool:
    """Wait until every accepted job took effect, while the fleet makes progress."""
    began = last_change = time.monotonic()
    last_done = -1
    while True:
        runs = read_runs(db)
        accepted = list(chaos.accepted.values())
        done = sum(1 for job_id in accepted if (run := runs.get(job_id)) is not None and run.effects >= 1)
        if done == len(accepted):
            return True
        now = time.monotonic()
        if done != last_done:
            last_done, last_change = done, now
        elif now - last_change > STALL_LIMIT:
            chaos.errors.append(
                f"{len(accepted) - done} jobs never took effect (nothing did for {STALL_LIMIT}s)"
            )
            return False
        if now - began > SETTLE_LIMIT:
            chaos.errors.append(f"{len(accepted) - done} jobs still to go after {SETTLE_LIMIT}s")
            return False
        time.sleep(1.0)


def fault_schedule(config: Config, rng: random.Random) -> Iterator[str]:
    """Every kind once per round, in a shuffled order: coverage with random order."""
    while True:
        kinds = [k for k in config.faults if config.broker == "redis" or k not in REDIS_ONLY]
        rng.shuffle(kinds)
        yield from kinds


def run(config: Config, data_dir: Path, *, progress: Callable[[str], None] = lambda _: None) -> Result:
    chaos = Chaos(config, data_dir)
    run_began = time.monotonic()
    chaos.start()
    try:
        rng = chaos.rng
        items = [(f"s{config.seed}-j{i:04d}", rng.choices(DURATIONS, WEIGHTS)[0]) for i in range(config.jobs)]
        duration = config.injections * sum(config.pace) / 2
        submit_deadline = time.monotonic() + duration + 300
        clients = ThreadPoolExecutor(max_workers=config.clients, thread_name_prefix="client")
        futures: list[Future[None]] = []

        def feed() -> None:
            # Submissions spread over most of the chaos, so web faults hit requests in flight.
            gap = duration * 0.8 / max(config.jobs, 1)
            for key, seconds in items:
                futures.append(clients.submit(chaos.submit, key, seconds, submit_deadline))
                time.sleep(gap)

        feeder = threading.Thread(target=feed, name="feeder", daemon=True)
        feeder.start()
        schedule = fault_schedule(config, rng)
        while len(chaos.injections) < config.injections:
            time.sleep(rng.uniform(*config.pace))  # chaos pacing: random moments, not synchronisation
            injection = chaos.inject(next(schedule))
            chaos.injections.append(injection)
            progress(f"{len(chaos.injections)}/{config.injections} {injection.kind} {injection.note}")
        feeder.join()
        for future in futures:
            future.result()
        clients.shutdown()
        # Let every fault end (frozen processes resume, the broker comes back) before counting.
        for timer in chaos._timers:
            timer.join()
        for thread in chaos._threads:
            thread.join(120)
        db = data_dir / "db.sqlite3"
        began = time.monotonic()
        settled = settle_all(chaos, db)
        settle = time.monotonic() - began
        jobs = read_jobs(db)
        # Refused jobs freed their key: they are the FAILUREs the API wrote on a failed publish.
        refused = [j.id for j in jobs.values() if j.state == "FAILURE" and j.error.startswith("not accepted")]
        if chaos.broker.proxy.errors:
            chaos.errors.append(f"the TCP proxy failed {chaos.broker.proxy.errors} time(s)")
        unfired = set(chaos.broker.proxy.pending_markers())
        injections = [
            replace(i, busy=True)
            if i.kind == "tcp_cut_pop"
            and i.explains == 0
            and f'"id": "{i.note}"'.encode() not in unfired
            and i.note != "nothing waiting"
            else i
            for i in chaos.injections
        ]
        return Result(
            config=config,
            injections=injections,
            accepted=dict(chaos.accepted),
            refused=refused,
            jobs=jobs,
            runs=read_runs(db),
            drains=chaos.drains,
            killed_at_grace=chaos.killed_at_grace,
            settle_seconds=settle,
            log_path=data_dir / "fleet.log",
            settled=settled,
            errors=chaos.errors,
            broker_facts=chaos.broker.facts(),
            seconds=time.monotonic() - run_began,
        )
    finally:
        chaos.stop()
