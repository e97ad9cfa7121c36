"""The release's web API, reached from this host through its Service (ClusterIP, forwarded by
kube-proxy on the node): jobs submitted and followed exactly as a user's client would, and
their effects counted afterwards (every job done, every effect exactly once)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from celery_fleet.local.waiting import wait_until
from tests.e2e.kube import Kube

#: Users a random_users job of this size makes (the API's minimum).
JOB_SIZE = 50
FINAL = ("SUCCESS", "FAILURE", "REVOKED")


@dataclass
class Web:
    """``http://<ClusterIP>:<port>`` with the Service's name as Host (Django's ALLOWED_HOSTS
    has the Service names; the chart adds them)."""

    base_url: str
    host: str

    @classmethod
    def of_release(cls, kube: Kube, namespace: str, service: str) -> Web:
        spec = kube.get("-n", namespace, "service", service)["spec"]
        return cls(f"http://{spec['clusterIP']}:{spec['ports'][0]['port']}", service)

    def _client(self, timeout: float = 15) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Host": self.host}, timeout=timeout)

    def ready(self) -> bool:
        try:
            with self._client(5) as client:
                return client.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def submit(self, count: int, *, total: int = JOB_SIZE, kind: str = "random_users") -> list[str]:
        """POST ``count`` jobs; return their ids (every POST must be accepted: 202)."""
        body: dict[str, Any] = {"kind": kind}
        if kind == "random_users":
            body["total"] = total
        ids = []
        with self._client() as client:
            for _ in range(count):
                response = client.post("/api/jobs/", json=body)
                assert response.status_code == 202, (response.status_code, response.text)
                ids.append(response.json()["id"])
        return ids

    def job(self, job_id: str, wait: float = 0) -> dict[str, Any]:
        with self._client(wait + 15) as client:
            response = client.get(f"/api/jobs/{job_id}", params={"wait": wait} if wait else None)
            response.raise_for_status()
            return dict(response.json())

    def job_done(self, job_id: str, *, timeout: float) -> dict[str, Any]:
        """The job once it is final, long-polling (the API waits at most 20 s per request)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id, wait=min(20.0, max(1.0, deadline - time.monotonic())))
            if job["state"] in FINAL or time.monotonic() > deadline:
                return job

    def jobs(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return {job_id: self.job(job_id) for job_id in ids}

    def user_count(self) -> int:
        with self._client() as client:
            response = client.get("/api/users/", params={"page_size": 1})
            response.raise_for_status()
            return int(response.json()["count"])

    def wait_finished(self, ids: list[str], *, timeout: float) -> dict[str, dict[str, Any]]:
        """Wait until every job is final (SUCCESS, FAILURE, REVOKED) and, if it succeeded, its
        success callback (a task of its own, queued when the job ends) has run; return them."""
        pending = set(ids)
        done: dict[str, dict[str, Any]] = {}

        def all_final() -> bool:
            for job_id in sorted(pending):
                job = self.job(job_id)
                if job["state"] in FINAL and (job["state"] != "SUCCESS" or job["callbacks_ran"]):
                    done[job_id] = job
                    pending.discard(job_id)
            return not pending

        wait_until(
            all_final, timeout=timeout, interval=1, what=f"{len(pending)} of {len(ids)} jobs to finish"
        )
        return done


def assert_exactly_once(
    jobs: dict[str, dict[str, Any]], users_before: int, users_after: int
) -> dict[str, int]:
    """0 lost, 0 doubled: every job SUCCESS, its users made once across all its attempts, its
    success callback run once, and the database holds exactly the users the jobs asked for.
    Returns counts for the test's report (``requeued``: jobs that ran more than once)."""
    failed = {k: (j["state"], j.get("error")) for k, j in jobs.items() if j["state"] != "SUCCESS"}
    assert not failed, f"lost or failed jobs: {failed}"
    for job_id, job in jobs.items():
        total = job["params"]["total"]
        result = job["result"]
        assert result["created"] + result["already_present"] == total, (job_id, result)
        assert job["callbacks_ran"] == ["on_success"], (job_id, job["callbacks_ran"])
    expected = sum(j["params"]["total"] for j in jobs.values())
    assert users_after - users_before == expected, (
        f"{users_after - users_before} users made for {expected} asked: a doubled or lost effect"
    )
    return {"jobs": len(jobs), "requeued": sum(1 for j in jobs.values() if j["attempts"] > 1)}


def elapsed(t0: float) -> float:
    return time.monotonic() - t0
