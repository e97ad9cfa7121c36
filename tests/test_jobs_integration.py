"""Jobs submitted through the real web tier (gunicorn) run on real Celery workers."""

from __future__ import annotations

import csv
import io
import json

import httpx
import pytest
import redis

from celery_fleet.local.waiting import wait_until
from tests.support.fleet import Fleet


def wait_final(url: str, job_id: str, timeout: float = 90) -> dict:
    def final() -> dict | None:
        job = httpx.get(f"{url}/api/jobs/{job_id}", timeout=5).json()
        return job if job["state"] in ("SUCCESS", "FAILURE") else None

    return wait_until(final, timeout=timeout, interval=0.2, what=f"job {job_id} to finish")


def test_random_users_job_runs_on_a_worker_with_progress_and_callback(fleet: Fleet) -> None:
    url = fleet.start_web()
    fleet.start_worker()
    response = httpx.post(f"{url}/api/jobs/", json={"kind": "random_users", "total": 120}, timeout=10)
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"id", "url"}
    assert body["url"].endswith(f"/api/jobs/{body['id']}")

    seen_progress: set[int] = set()

    def finished() -> dict | None:
        job = httpx.get(body["url"], timeout=5).json()
        seen_progress.add(job["progress"])
        return job if job["state"] == "SUCCESS" and job["callbacks_ran"] else None

    job = wait_until(finished, timeout=90, interval=0.05, what="job success and callback")
    assert job["result"] == {"total": 120, "created": 120, "already_present": 0}
    assert job["progress"] == 100
    assert job["callbacks_ran"] == ["on_success"]
    assert any(0 < p < 100 for p in seen_progress), f"no intermediate progress seen: {sorted(seen_progress)}"

    users = httpx.get(f"{url}/api/users/?page_size=200", timeout=5).json()
    assert users["count"] == 120
    assert len(users["results"]) == 120
    assert users["next"] is None


def test_export_job_offers_a_csv_with_every_user(fleet: Fleet) -> None:
    url = fleet.start_web()
    fleet.start_worker()
    made = httpx.post(f"{url}/api/jobs/", json={"kind": "random_users", "total": 60}, timeout=10).json()
    assert wait_final(url, made["id"])["state"] == "SUCCESS"
    export = httpx.post(f"{url}/api/jobs/", json={"kind": "export_users"}, timeout=10).json()
    job = wait_final(url, export["id"])
    assert job["state"] == "SUCCESS", job
    assert job["result"]["rows"] == 60
    download = httpx.get(job["download_url"], timeout=10)
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(download.text)))
    assert len(rows) == 60
    assert all(row["username"] and "@" in row["email"] for row in rows)


def test_failing_job_reports_error_and_runs_error_callback(fleet: Fleet) -> None:
    url = fleet.start_web()
    fleet.start_worker()
    response = httpx.post(
        f"{url}/api/jobs/", json={"kind": "random_users", "total": 50, "fail": True}, timeout=10
    )
    job_id = response.json()["id"]

    def failed_with_callback() -> dict | None:
        job = httpx.get(f"{url}/api/jobs/{job_id}", timeout=5).json()
        return job if job["state"] == "FAILURE" and job["callbacks_ran"] else None

    job = wait_until(failed_with_callback, timeout=90, what="failure and error callback")
    assert "failed on purpose" in job["error"]
    assert job["callbacks_ran"] == ["on_failure"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (json.dumps([1, 2]).encode(), "JSON object"),
        (json.dumps({"kind": "mine_bitcoin"}).encode(), "kind must be one of"),
        (json.dumps({"kind": "random_users", "total": 49}).encode(), "from 50 to 500"),
        (json.dumps({"kind": "random_users", "total": 501}).encode(), "from 50 to 500"),
        (json.dumps({"kind": "random_users", "total": 100.5}).encode(), "whole number"),
        (json.dumps({"kind": "random_users", "total": "100"}).encode(), "whole number"),
        (json.dumps({"kind": "random_users", "total": True}).encode(), "whole number"),
        (json.dumps({"kind": "random_users"}).encode(), "whole number"),
        (json.dumps({"kind": "export_users", "total": 60}).encode(), "unknown field"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_enqueued(
    fleet: Fleet, redis_client: redis.Redis, body: bytes, message: str
) -> None:
    url = fleet.start_web()
    response = httpx.post(
        f"{url}/api/jobs/", content=body, headers={"content-type": "application/json"}, timeout=10
    )
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert redis_client.llen("default") == 0
    assert redis_client.llen("exports") == 0
    assert httpx.get(f"{url}/api/users/", timeout=5).json()["count"] == 0


def test_unknown_job_is_404_and_health_endpoints_touch_dependencies(fleet: Fleet) -> None:
    url = fleet.start_web()
    assert httpx.get(f"{url}/api/jobs/00000000-0000-0000-0000-000000000000", timeout=5).status_code == 404
    assert httpx.get(f"{url}/api/jobs/not-a-uuid", timeout=5).status_code == 404
    assert httpx.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}
    ready = httpx.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == ["database", "broker"]


def test_a_redelivered_job_does_not_create_its_users_twice(fleet: Fleet, redis_client: redis.Redis) -> None:
    import sqlite3
    import uuid

    from tests.support.ledger import send_tasks

    url = fleet.start_web()
    fleet.start_worker()
    job_id = httpx.post(f"{url}/api/jobs/", json={"kind": "random_users", "total": 80}, timeout=10).json()[
        "id"
    ]
    assert wait_final(url, job_id)["result"]["created"] == 80

    def redeliver() -> None:  # the same message again, as Redis redelivers it after a lost worker
        send_tasks(
            fleet.env["CELERY_BROKER_URL"],
            [("jobs.tasks.generate_random_users", (job_id,), job_id)],
            "default",
        )

    # A finished job: the delivery does nothing at all.
    redeliver()
    wait_until(
        lambda: redis_client.llen("default") == 0 and redis_client.hlen("unacked") == 0,
        timeout=60,
        what="the second delivery to be handled",
    )
    assert httpx.get(f"{url}/api/jobs/{job_id}", timeout=5).json()["attempts"] == 1
    # A job whose worker died after making the users, before recording the end: it runs again
    # and makes no user twice.
    with sqlite3.connect(fleet.data_dir / "db.sqlite3") as db:
        db.execute("UPDATE jobs_job SET state = 'PROGRESS' WHERE id = ?", (uuid.UUID(job_id).hex,))
    redeliver()
    job = wait_until(
        lambda: (
            (j := httpx.get(f"{url}/api/jobs/{job_id}", timeout=5).json())["attempts"] == 2
            and j["state"] == "SUCCESS"
            and j
        ),
        timeout=60,
        what="the third delivery to finish",
    )
    assert job["result"] == {"total": 80, "created": 0, "already_present": 80}
    assert httpx.get(f"{url}/api/users/", timeout=5).json()["count"] == 80
