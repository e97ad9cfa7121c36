"""Reads the ``WorkRun`` ledger that ``jobs.tasks.timed_work`` keeps, straight from SQLite."""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Run:
    key: str
    starts: int
    effects: int
    completions: int
    start_times: tuple[float, ...] = ()
    #: Deliveries, including those that found the job finished and did nothing.
    deliveries: int = 0


@dataclass(frozen=True)
class JobRow:
    id: str
    idempotency_key: str | None
    state: str
    error: str
    attempts: int
    republishes: int
    created_at: str
    worker: str
    published_at: str | None


def read_runs(db_path: Path) -> dict[str, Run]:
    with sqlite3.connect(db_path, timeout=30) as conn:
        rows = conn.execute(
            "SELECT key, starts, effects, completions, start_times, deliveries FROM jobs_workrun"
        ).fetchall()
    return {
        row[0]: Run(
            *row[:4],  # type: ignore[misc]
            start_times=tuple(float(t) for t in (row[4] or "").split()),
            deliveries=row[5],
        )
        for row in rows
    }


def read_jobs(db_path: Path) -> dict[str, JobRow]:
    """Every job by id (the dashed form, as the API and the ledger write it)."""
    with sqlite3.connect(db_path, timeout=30) as conn:
        rows = conn.execute(
            "SELECT id, idempotency_key, state, error, attempts, republishes, created_at, worker,"
            " published_at FROM jobs_job"
        ).fetchall()
    jobs = [JobRow(str(uuid.UUID(row[0])), *row[1:]) for row in rows]
    return {job.id: job for job in jobs}


def enqueue_timed_work(broker_url: str, items: list[tuple[str, float]], queue: str = "default") -> None:
    """Publish through Celery itself, so messages carry the same headers and routing as the app's."""
    send_tasks(broker_url, [("jobs.tasks.timed_work", (key, seconds), key) for key, seconds in items], queue)


def send_tasks(broker_url: str, tasks: list[tuple[str, tuple[object, ...], str | None]], queue: str) -> None:
    from fleetsite.celery import app

    with app.connection_for_write(broker_url) as conn:
        producer = app.amqp.Producer(conn)
        for name, args, task_id in tasks:
            app.send_task(name, args=args, task_id=task_id, queue=queue, producer=producer)
