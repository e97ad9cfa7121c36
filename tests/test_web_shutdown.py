"""gunicorn on SIGTERM: requests already in flight complete with 2xx; readiness turns false."""

from __future__ import annotations

import signal
import threading

import httpx

from celery_fleet.local.waiting import wait_until
from tests.support.fleet import Fleet, accepted_connections

IN_FLIGHT = 6
LONG_POLL_SECONDS = 3


def test_in_flight_requests_complete_after_sigterm(fleet: Fleet) -> None:
    url = fleet.start_web()
    web = next(p for p in fleet.processes if p.name == "web")
    port = int(url.rsplit(":", 1)[1])
    # No worker runs, so the job stays PENDING and each long-poll holds its request open.
    job = httpx.post(f"{url}/api/jobs/", json={"kind": "export_users"}, timeout=10).json()
    results: list[object] = []

    def long_poll() -> None:
        try:
            response = httpx.get(
                f"{url}/api/jobs/{job['id']}?wait={LONG_POLL_SECONDS}",
                timeout=30,
                headers={"Connection": "close"},
            )
            results.append(response.status_code)
        except httpx.HTTPError as exc:
            results.append(exc)

    threads = [threading.Thread(target=long_poll) for _ in range(IN_FLIGHT)]
    for thread in threads:
        thread.start()
    wait_until(
        lambda: accepted_connections(web.pid, port) >= IN_FLIGHT, timeout=10, what="all requests accepted"
    )
    web.send(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=60)
    assert results == [200] * IN_FLIGHT, f"in-flight requests did not all complete: {results}"
    assert web.wait(30) == 0, "gunicorn did not exit cleanly after draining"


def test_readyz_is_503_while_shutting_down_and_names_the_failing_part(fleet: Fleet) -> None:
    import django
    from django.test import Client, override_settings

    django.setup()
    from celery_fleet.health import shutting_down
    from fleetsite.celery import app

    previous = app.conf.broker_url
    try:
        with override_settings(ALLOWED_HOSTS=["testserver"]):
            app.conf.broker_url = fleet.env["CELERY_BROKER_URL"]
            assert Client().get("/readyz").status_code == 200
            shutting_down.set()
            try:
                response = Client().get("/readyz")
            finally:
                shutting_down.clear()
            assert response.status_code == 503
            assert response.json()["failing"] == {"process": "shutting down"}
            app.conf.broker_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
            response = Client().get("/readyz")
            assert response.status_code == 503
            assert set(response.json()["failing"]) == {"broker"}
    finally:
        app.conf.broker_url = previous
