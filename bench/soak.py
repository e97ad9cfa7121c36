"""Soak: the fault suite at scale -- many injections across seeds, one table.

Each seed runs a whole fleet (tests/support/chaos.py: broker behind a TCP proxy, gunicorn,
workers, the outbox sweeper) while clients submit jobs over HTTP and faults hit workers,
the broker, the network and the web at random moments; then every job is counted.

    .venv/bin/python bench/soak.py                       # 4 seeds x 250 injections on Redis
    .venv/bin/python bench/soak.py --seeds 11 --injections 100 --broker rabbitmq

Exit status 1 if any seed lost a job, applied an effect twice, ran a refused job, ran more
duplicates than its faults explain, or tested nothing (no fault hit work in flight, nothing
was redelivered).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import chaos

from _common import load_line

COLUMNS = (
    ("seed", 6),
    ("broker", 9),
    ("injections", 11),
    ("busy", 6),
    ("jobs", 6),
    ("lost", 6),
    ("doubled", 8),
    ("503-ran", 8),
    ("dup runs", 9),
    ("explained", 10),
    ("redelivered", 12),
    ("republished", 12),
    ("worst redelivery", 17),
    ("minutes", 8),
)


def row(values: list[object]) -> str:
    return "".join(f"{v!s:>{width}}" for v, (_, width) in zip(values, COLUMNS, strict=True))


def failures(result: chaos.Result) -> list[str]:
    problems = []
    if result.errors:
        problems.append(f"errors: {result.errors[:3]}")
    if result.lost:
        problems.append(f"lost {result.lost}")
    if result.doubled:
        problems.append(f"doubled {result.doubled}")
    if result.refused_but_ran:
        problems.append(f"refused but ran {result.refused_but_ran}")
    if result.duplicate_runs > result.explained:
        problems.append(f"{result.duplicate_runs} duplicate runs, faults explain {result.explained}")
    if not result.busy_hits or not result.redelivered:
        problems.append("tested nothing: no injection hit work in flight, or nothing was redelivered")
    return problems


def soak(
    seeds: list[int],
    injections: int,
    broker: str,
    workers: int,
    pace: tuple[float, float],
    keep: bool,
    jobs_per_injection: int = 1,
) -> list[chaos.Result]:
    results = []
    for seed in seeds:
        faults = tuple(k for k in chaos.ALL_FAULTS if broker == "redis" or k not in chaos.REDIS_ONLY)
        config = chaos.Config(
            seed=seed,
            broker=broker,
            workers=workers,
            injections=injections,
            jobs=injections * jobs_per_injection,
            pace=pace,
            faults=faults,
        )
        data_dir = Path(tempfile.mkdtemp(prefix=f"soak-{broker}-{seed}-"))
        began = time.monotonic()

        def progress(line: str, seed: int = seed, began: float = began) -> None:
            print(f"  [seed {seed} {time.monotonic() - began:5.0f}s] {line}", flush=True)

        result = chaos.run(config, data_dir, progress=progress)
        results.append(result)
        print(result.summary(), flush=True)
        if not keep and not failures(result):
            import shutil

            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"  kept {data_dir}")
    return results


def table(results: list[chaos.Result]) -> str:
    lines = [row([name for name, _ in COLUMNS])]
    for r in results:
        delays = r.redelivery_delays()
        lines.append(
            row(
                [
                    r.config.seed,
                    r.config.broker,
                    len(r.injections),
                    r.busy_hits,
                    len(r.accepted),
                    len(r.lost),
                    len(r.doubled),
                    len(r.refused_but_ran),
                    r.duplicate_runs,
                    r.explained,
                    r.redelivered,
                    r.republished,
                    f"{max(delays, default=0):.1f}s",
                    f"{r.seconds / 60:.1f}",
                ]
            )
        )
    worst = max((max(r.redelivery_delays(), default=0) for r in results), default=0)
    lines.append(
        row(
            [
                "total",
                "",
                sum(len(r.injections) for r in results),
                sum(r.busy_hits for r in results),
                sum(len(r.accepted) for r in results),
                sum(len(r.lost) for r in results),
                sum(len(r.doubled) for r in results),
                sum(len(r.refused_but_ran) for r in results),
                sum(r.duplicate_runs for r in results),
                sum(r.explained for r in results),
                sum(r.redelivered for r in results),
                sum(r.republished for r in results),
                f"{worst:.1f}s",
                f"{sum(r.seconds for r in results) / 60:.1f}",
            ]
        )
    )
    kinds: Counter[str] = Counter()
    for r in results:
        kinds.update(r.by_kind())
    lines.append("injections by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    refused = sum(len(r.refused) for r in results)
    lines.append(f"jobs refused with 503 (and never run): {refused}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="11,23,42,77", help="Comma-separated seeds, one fleet each.")
    parser.add_argument("--injections", type=int, default=250, help="Injections per seed.")
    parser.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--pace", default="0.2,0.8", help="Seconds between injections: min,max.")
    parser.add_argument("--jobs-per-injection", type=int, default=1, help="Jobs submitted per injection.")
    parser.add_argument("--keep", action="store_true", help="Keep every run's folder (logs, database).")
    args = parser.parse_args()
    low, high = (float(x) for x in args.pace.split(","))
    print(load_line(), flush=True)
    began = time.monotonic()
    results = soak(
        [int(s) for s in args.seeds.split(",")],
        args.injections,
        args.broker,
        args.workers,
        (low, high),
        args.keep,
        args.jobs_per_injection,
    )
    print(f"\nsoak: {time.monotonic() - began:.0f}s, {load_line()}")
    print(table(results))
    bad = {r.config.seed: failures(r) for r in results if failures(r)}
    if bad:
        print(f"FAILED: {bad}")
        sys.exit(1)


if __name__ == "__main__":
    main()
