"""Record a Deployment's replica count over time (what the autoscaler decided, when)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from celery_fleet.local.waiting import wait_until
from tests.e2e.kube import Kube


@dataclass
class ReplicaTimeline:
    kube: Kube
    namespace: str
    deployments: Iterable[str]
    interval: float = 0.5
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.deployments = list(self.deployments)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> ReplicaTimeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                items = self.kube.items("-n", self.namespace, "deployments")
                now = {
                    d["metadata"]["name"]: int(d["spec"].get("replicas", 1))
                    for d in items
                    if d["metadata"]["name"] in self.deployments
                }
                with self._lock:
                    self.samples.append((time.monotonic(), now))
            except Exception:  # a busy API server: sample again
                pass
            self._stop.wait(self.interval)

    def latest(self, name: str) -> int | None:
        with self._lock:
            for _, values in reversed(self.samples):
                if name in values:
                    return values[name]
        return None

    def wait_for(self, name: str, replicas: int, *, timeout: float) -> float:
        """Wait until ``name`` has ``replicas``; return the monotonic time it was first seen."""
        wait_until(
            lambda: self.latest(name) == replicas,
            timeout=timeout,
            interval=0.2,
            what=f"{name} to have {replicas} replicas (now {self.latest(name)}; {self.describe(name)})",
        )
        with self._lock:
            return self._first_of_last_run(name, replicas)

    def _first_of_last_run(self, name: str, replicas: int) -> float:
        first = None
        for t, values in reversed(self.samples):
            if values.get(name) == replicas:
                first = t
            elif name in values:
                break
        assert first is not None
        return first

    def values(self, name: str, since: float = 0.0) -> list[int]:
        with self._lock:
            return [v[name] for t, v in self.samples if t >= since and name in v]

    def first_below(self, name: str, value: int, since: float) -> float | None:
        with self._lock:
            for t, v in self.samples:
                if t >= since and name in v and v[name] < value:
                    return t
        return None

    def describe(self, name: str, since: float = 0.0) -> str:
        """Changes only: ``+0.0s 1 -> +7.5s 5 -> ...`` relative to ``since`` (or the first sample)."""
        with self._lock:
            samples = [(t, v[name]) for t, v in self.samples if name in v]
        if not samples:
            return "no samples"
        origin = since or samples[0][0]
        out, last = [], None
        for t, v in samples:
            if v != last:
                out.append(f"{t - origin:+.1f}s {v}")
                last = v
        return " -> ".join(out)

    def pod_seconds(self, name: str, since: float, until: float) -> float:
        """Replicas integrated over [since, until]: what the group cost (a step function of the
        samples; each value holds until the next sample)."""
        with self._lock:
            samples = [(t, v[name]) for t, v in self.samples if name in v]
        total, previous = 0.0, None
        for t, value in samples:
            if previous is not None:
                start, end = max(previous[0], since), min(t, until)
                if end > start:
                    total += previous[1] * (end - start)
            previous = (t, value)
        if previous is not None and until > max(previous[0], since):
            total += previous[1] * (until - max(previous[0], since))
        return total
