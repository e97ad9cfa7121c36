"""What the simulated fleet is given to do: when tasks arrive and how long each one runs.

* **Arrivals**: a built-in profile (``steady``, ``burst``, ``diurnal``; seeded) or a CSV file
  with a header row and two columns, ``time_s,tasks``: at second ``time_s`` (a number >= 0,
  rows in any order, repeated times add up) ``tasks`` tasks (an integer >= 0) are published.
* **Durations**: lognormal with the given mean and shape ``sigma``; the n-th task started
  gets the n-th duration, so every contender runs the same tasks.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROFILES = ("steady", "burst", "diurnal")


class WorkloadError(ValueError):
    """A workload file that cannot be read; the message names the line."""


@dataclass(frozen=True)
class Workload:
    name: str
    #: ``arrivals[t]`` tasks are published during second ``t``.
    arrivals: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.arrivals)


def _poisson(rng: random.Random, rate: float) -> int:
    # Knuth's method: fine for the small per-second rates used here.
    if rate <= 0:
        return 0
    limit, k, p = math.exp(-rate), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def builtin_profile(name: str, *, seed: int = 1, duration: int | None = None) -> Workload:
    """``steady``: ~1 task/s for 10 min.  ``burst``: a trickle (1 task/50 s) with two bursts of
    100 tasks over 10 s, 15 min apart (long enough for every scaler to go back down).
    ``diurnal``: a compressed day, 0.1 to 1.6 tasks/s along a sine over 30 min."""
    rng = random.Random(seed)
    if name == "steady":
        n = duration or 600
        return Workload(name, tuple(_poisson(rng, 1.0) for _ in range(n)))
    if name == "burst":
        n = duration or 1800
        arrivals = [_poisson(rng, 0.02) for _ in range(n)]
        for start in (60, 960):
            for t in range(start, min(start + 10, n)):
                arrivals[t] += 10
        return Workload(name, tuple(arrivals))
    if name == "diurnal":
        n = duration or 1800
        rates = [0.1 + 1.5 * (1 - math.cos(2 * math.pi * t / n)) / 2 for t in range(n)]
        return Workload(name, tuple(_poisson(rng, r) for r in rates))
    raise WorkloadError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")


def load_workload_csv(path: Path) -> Workload:
    """Read ``time_s,tasks`` rows (header required) into 1 s bins."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkloadError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    reader = csv.DictReader(text.splitlines())
    fields = [f.strip() for f in reader.fieldnames or []]
    if fields[:2] != ["time_s", "tasks"]:
        raise WorkloadError(
            f"{path}: the header must be 'time_s,tasks', found {','.join(fields) or 'nothing'}"
        )
    bins: dict[int, int] = {}
    for line, row in enumerate(reader, start=2):
        raw_t, raw_n = (row.get("time_s") or "").strip(), (row.get("tasks") or "").strip()
        if not raw_t and not raw_n:
            continue
        try:
            t, n = float(raw_t), int(raw_n)
        except ValueError:
            raise WorkloadError(
                f"{path}:{line}: expected a number and an integer, got {raw_t!r}, {raw_n!r}"
            ) from None
        if not math.isfinite(t) or t < 0 or n < 0:
            raise WorkloadError(f"{path}:{line}: time_s and tasks must be >= 0, got {raw_t!r}, {raw_n!r}")
        if t > 7 * 24 * 3600:
            raise WorkloadError(f"{path}:{line}: time_s {t:g} is more than a week; use seconds")
        bins[int(t)] = bins.get(int(t), 0) + n
    if not bins or not sum(bins.values()):
        raise WorkloadError(f"{path}: no tasks in the workload")
    arrivals = [0] * (max(bins) + 1)
    for t, n in bins.items():
        arrivals[t] = n
    return Workload(path.stem, tuple(arrivals))


@dataclass(frozen=True)
class TaskModel:
    mean_seconds: float = 5.0
    sigma: float = 0.5

    def durations(self, seed: int) -> Iterator[float]:
        """The n-th task started gets the n-th duration: the same for every contender."""
        rng = random.Random(seed + 7919)
        mu = math.log(self.mean_seconds) - self.sigma**2 / 2  # lognormal with this mean
        while True:
            yield max(0.05, rng.lognormvariate(mu, self.sigma))
