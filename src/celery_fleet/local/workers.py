"""Worker groups on one machine: start, count and drain real Celery worker processes.

A group is what a worker Deployment is in the cluster: one set of queues, one
concurrency, a number of identical workers.  Stopping picks idle workers first
(the local twin of ``controller.kubernetes.io/pod-deletion-cost``) and stops them
through the graceful drain: SIGTERM, drain window, requeue, exit.

Two threads change a group: the autoscaler (scale up/down) and the fleet's supervision
loop (replace workers that died on their own).  Every change of membership happens under
one lock, so a worker being started by one is never mistaken for a missing one by the other.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from celery_fleet import roles
from celery_fleet.lifecycle import READY_FILE, worker_load
from celery_fleet.local.processes import FLEET, LineSink, ManagedProcess, RestartBackoff, describe_exit


@dataclass
class WorkerGroupSpec:
    name: str
    queues: tuple[str, ...]
    concurrency: int = 1
    min_workers: int = 1
    max_workers: int = 4
    initial_workers: int = 1


@dataclass
class LocalWorker:
    process: ManagedProcess
    probe_dir: Path

    @property
    def name(self) -> str:
        return self.process.name

    def ready(self) -> bool:
        return self.process.alive() and (self.probe_dir / READY_FILE).exists()

    def held(self) -> int:
        """Tasks the worker holds; unknown (not yet beating) counts as busy."""
        load = worker_load(self.probe_dir)
        return 1_000 if load is None else load[0]


@dataclass
class WorkerGroup:
    spec: WorkerGroupSpec
    env: Mapping[str, str]
    probe_root: Path
    sink: LineSink
    grace_period: float
    #: ``celery -A`` of the user's project.
    celery_app: str
    loglevel: str = "INFO"
    #: Celery's start-up banner off (``celery --quiet``); the fleet says "started" instead.
    quiet: bool = False
    workers: list[LocalWorker] = field(default_factory=list)
    draining: list[LocalWorker] = field(default_factory=list)
    drain_seconds: list[float] = field(default_factory=list)
    #: How many workers the group should have: crashed ones are replaced up to this.
    target: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    #: Held while membership changes (start, pick for removal, replace): see the module doc.
    _lock: threading.RLock = field(default_factory=threading.RLock)
    #: Workers that die soon after their start (a project that does not import) come back slowly.
    restart_backoff: RestartBackoff = field(default_factory=RestartBackoff)
    _replace_at: float = 0.0

    def replicas(self) -> int:
        """Workers that count: running or starting, not draining, not dead."""
        with self._lock:
            return sum(1 for w in self.workers if w.process.alive())

    def scale_up(self, count: int) -> list[LocalWorker]:
        with self._lock:
            self.target += count
            return self._start(count)

    def replace_crashed(self) -> list[LocalWorker]:
        """Start workers for any that died on their own (crash, OOM), back up to ``target``."""
        with self._lock:
            now = time.monotonic()
            # Workers being stopped are in ``draining``: whatever died here, died unasked.
            for dead in [w for w in self.workers if not w.process.alive()]:
                self.workers.remove(dead)
                delay = self.restart_backoff.delay_after(now - dead.process.started_at)
                self._replace_at = max(self._replace_at, now + delay)
                code = describe_exit(dead.process.returncode())
                later = f" in {delay:.0f} s" if delay else ""
                self._say(f"worker {dead.name} {code}; starting a replacement{later}")
            missing = self.target - len(self.workers)
            return self._start(missing) if missing > 0 and now >= self._replace_at else []

    def worker_argv(self, name: str) -> list[str]:
        return roles.worker_argv(
            self.spec.queues,
            app=self.celery_app,
            hostname=f"{name}@%h",
            concurrency=self.spec.concurrency,
            loglevel=self.loglevel,
            quiet=self.quiet,
        )

    def _start(self, count: int) -> list[LocalWorker]:
        started = []
        for _ in range(count):
            name = f"{self.spec.name}-{next(self._ids)}"
            probe_dir = self.probe_root / name
            for stale in (probe_dir / "heartbeat", probe_dir / READY_FILE):
                stale.unlink(missing_ok=True)
            process = ManagedProcess(
                name, self.worker_argv(name), env=roles.worker_env(self.env, probe_dir), sink=self.sink
            ).start()
            worker = LocalWorker(process, probe_dir)
            self.workers.append(worker)
            started.append(worker)
            self._say(f"worker {name} started (pid {process.pid}, queues {','.join(self.spec.queues)})")
        return started

    def pick_for_removal(self, count: int) -> list[LocalWorker]:
        """Idle workers first, then the least busy; newest first among equals."""
        with self._lock:
            alive = [w for w in reversed(self.workers) if w.process.alive()]
            chosen = sorted(alive, key=lambda w: w.held())[:count]
            self.target = max(0, self.target - len(chosen))
            for worker in chosen:
                self.workers.remove(worker)
                self.draining.append(worker)
        return chosen

    def scale_down(self, count: int, *, wait: bool = False) -> list[LocalWorker]:
        chosen = self.pick_for_removal(count)
        threads = [threading.Thread(target=self._drain, args=(w,), daemon=True) for w in chosen]
        for thread in threads:
            thread.start()
        if wait:
            for thread in threads:
                thread.join()
        return chosen

    def _drain(self, worker: LocalWorker) -> None:
        seconds = worker.process.stop(signal.SIGTERM, timeout=self.grace_period)
        with self._lock:
            self.draining.remove(worker)
            self.drain_seconds.append(seconds)
        self._say(f"worker {worker.name} stopped after a {seconds:.0f} s drain")

    def stop_all(self) -> None:
        self.scale_down(len(self.workers), wait=True)
        with self._lock:
            leftovers = list(self.draining)
        for worker in leftovers:
            worker.process.wait(self.grace_period)

    def _say(self, message: str) -> None:
        self.sink(FLEET, message)


def default_groups(start_workers: int, max_workers: int, queues: Sequence[str]) -> list[WorkerGroupSpec]:
    """One group per queue; the first (user jobs) starts with ``start_workers``."""
    return [
        WorkerGroupSpec(
            name=queue,
            queues=(queue,),
            min_workers=1,
            max_workers=max(max_workers, start_workers if index == 0 else 1),
            initial_workers=start_workers if index == 0 else 1,
        )
        for index, queue in enumerate(queues)
    ]
