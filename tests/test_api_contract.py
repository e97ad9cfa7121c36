"""The API as an attacker and a careless client meet it, on the real web tier (gunicorn, uvicorn workers).

Every bad body is a 400 with a message and queues nothing, whatever its depth, size, type or
encoding; a body not declared JSON is a 415 (so no cross-site form can submit a job); errors are
JSON with the spec's ``Error`` schema; TRACE is refused and HEAD answered wherever GET is; staff
accounts never show; and schemathesis, with all its checks, finds nothing the spec does not explain.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pytest
import redis
import yaml

from celery_fleet import roles
from celery_fleet.local.waiting import wait_until
from tests.support.fleet import Fleet, base_env, migrate

JSON = "application/json"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, redis_server) -> Iterator[Fleet]:  # type: ignore[no-untyped-def]
    """One web tier for the module (starting gunicorn per test would cost more than the tests)."""
    data = tmp_path_factory.mktemp("contract")
    # Short timed_work jobs: schemathesis's long-polls on them would otherwise wait the full 25 s.
    env = {**base_env(data, redis_server.url), "JOBS_TIMED_WORK_MAX": "0.5"}
    migrate(env)
    running = Fleet(data_dir=data, env=env, log_path=data / "fleet.log")
    running.url = running.start_web()  # type: ignore[attr-defined]
    yield running
    running.stop_all()
    print(running.logs()[-4000:])


@pytest.fixture
def url(site: Fleet, redis_client: redis.Redis) -> str:
    return site.url  # type: ignore[attr-defined,no-any-return]


@pytest.fixture(scope="module")
def spec(site: Fleet) -> dict:
    return httpx.get(f"{site.url}/api/openapi.json", timeout=10).json()  # type: ignore[attr-defined]


def job_rows(site: Fleet) -> int:
    db = sqlite3.connect(site.data_dir / "db.sqlite3", timeout=30)
    try:
        return int(db.execute("SELECT COUNT(*) FROM jobs_job").fetchone()[0])
    finally:
        db.close()


def queued(redis_client: redis.Redis) -> int:
    return sum(int(redis_client.llen(q)) for q in ("default", "exports", "periodic"))


def error_schema(spec: dict) -> dict:
    return {
        **spec["components"]["schemas"]["Error"],
        "$schema": "https://json-schema.org/draft/2020-12/schema",
    }


# --- Bad bodies --------------------------------------------------------------------------------
def _nested(depth: int) -> bytes:
    return b'{"kind": "export_users", "fail": ' + b"[" * depth + b"]" * depth + b"}"


BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("not JSON", b"not json", "not valid JSON"),
    ("truncated", b'{"kind": "export_users"', "not valid JSON"),
    ("trailing garbage", b'{"kind": "export_users"} x', "not valid JSON"),
    ("empty", b"", "the body is empty"),
    ("a JSON array", b"[1, 2]", "JSON object"),
    ("a JSON string", b'"export_users"', "JSON object"),
    ("JSON null", b"null", "JSON object"),
    ("a number", b"42", "JSON object"),
    ("arrays 10,000 deep", b"[" * 5000 + b"]" * 5000, "nests too deeply"),
    ("objects 2,000 deep", b'{"a": ' * 2000 + b"1" + b"}" * 2000, "nests too deeply"),
    ("deep nesting in a field", _nested(4000), "nests too deeply"),
    ("an integer of 5,000 digits", b'{"kind": "random_users", "total": ' + b"9" * 5000 + b"}", "digits"),
    ("an integer of 40 digits", b'{"kind": "random_users", "total": ' + b"9" * 40 + b"}", "from 50 to 500"),
    ("a float past double range", b'{"kind": "random_users", "total": 1e400}', "whole number"),
    ("NaN", b'{"kind": "random_users", "total": NaN}', "not a JSON number"),
    ("Infinity", b'{"kind": "random_users", "total": Infinity}', "not a JSON number"),
    ("a 20 KB body", json.dumps({"kind": "export_users", "pad": "x" * 20_000}).encode(), "at most 16384"),
    ("a 3 MB body", b'{"kind": "export_users", "pad": "' + b"x" * 3_000_000 + b'"}', "at most 16384"),
    ("not UTF-8", b'{"kind": "export_\xff\xfe"}', "not UTF-8"),
    ("UTF-16", json.dumps({"kind": "export_users"}).encode("utf-16"), "not UTF-8"),
    ("a NUL in a string", b'{"kind": "export_users\x00"}', "not valid JSON"),
    ("unknown kind", json.dumps({"kind": "mine_bitcoin"}).encode(), "kind must be one of"),
    ("kind missing", json.dumps({"total": 100}).encode(), "kind is required"),
    ("kind a number", json.dumps({"kind": 5}).encode(), "kind must be one of"),
    ("kind a list", json.dumps({"kind": ["random_users"]}).encode(), "kind"),
    ("a 10 KB kind", json.dumps({"kind": "k" * 10_000}).encode(), "kind must be one of"),
    ("total too small", json.dumps({"kind": "random_users", "total": 49}).encode(), "from 50 to 500"),
    ("total too large", json.dumps({"kind": "random_users", "total": 501}).encode(), "from 50 to 500"),
    ("total negative", json.dumps({"kind": "random_users", "total": -100}).encode(), "from 50 to 500"),
    ("total a fraction", json.dumps({"kind": "random_users", "total": 100.5}).encode(), "whole number"),
    ("total a string", json.dumps({"kind": "random_users", "total": "100"}).encode(), "whole number"),
    ("total true", json.dumps({"kind": "random_users", "total": True}).encode(), "whole number"),
    ("total null", json.dumps({"kind": "random_users", "total": None}).encode(), "whole number"),
    ("total an object", json.dumps({"kind": "random_users", "total": {"n": 100}}).encode(), "whole number"),
    ("total missing", json.dumps({"kind": "random_users"}).encode(), "total is required"),
    ("fail a string", json.dumps({"kind": "export_users", "fail": "yes"}).encode(), "true or false"),
    ("fail a number", json.dumps({"kind": "export_users", "fail": 1}).encode(), "true or false"),
    ("unknown field", json.dumps({"kind": "export_users", "total": 60}).encode(), "unknown field"),
    (
        "many unknown fields",
        json.dumps({"kind": "export_users", **{f"f{i}": i for i in range(500)}}).encode(),
        "unknown field",
    ),
]


@pytest.mark.parametrize(
    ("body", "message"), [(b, m) for _, b, m in BAD_BODIES], ids=[d for d, _, _ in BAD_BODIES]
)
def test_a_bad_body_is_a_400_with_a_message_and_queues_nothing(
    site: Fleet, url: str, spec: dict, redis_client: redis.Redis, body: bytes, message: str
) -> None:
    before = job_rows(site)
    response = httpx.post(f"{url}/api/jobs/", content=body, headers={"Content-Type": JSON}, timeout=30)
    assert response.status_code == 400, response.text[:300]
    assert response.headers["content-type"].startswith(JSON)
    jsonschema.validate(response.json(), error_schema(spec))
    assert message in response.json()["error"], response.json()
    assert len(response.json()["error"]) < 400, "the message repeats too much of the input"
    assert queued(redis_client) == 0
    assert job_rows(site) == before


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/json-patch+json",
        "text/json",
    ],
)
def test_a_body_not_declared_json_is_a_415(
    site: Fleet, url: str, spec: dict, redis_client: redis.Redis, content_type: str | None
) -> None:
    before = job_rows(site)
    headers = {"Content-Type": content_type} if content_type else {}
    for body in (json.dumps({"kind": "export_users"}).encode(), b""):
        response = httpx.post(f"{url}/api/jobs/", content=body, headers=headers, timeout=10)
        assert response.status_code == 415, (content_type, body, response.text)
        jsonschema.validate(response.json(), error_schema(spec))
        assert "Content-Type: application/json" in response.json()["error"]
    assert queued(redis_client) == 0
    assert job_rows(site) == before


def test_a_cross_site_form_cannot_submit_a_job(site: Fleet, url: str, redis_client: redis.Redis) -> None:
    """What an HTML form on another site can send without a CORS preflight: all refused."""
    evil = {"Origin": "https://evil.example", "Referer": "https://evil.example/page"}
    attempts = [
        # <form enctype="text/plain"> smuggling a JSON body: the classic trick.
        ("text/plain", b'{"kind": "export_users", "x": "="}'),
        ("application/x-www-form-urlencoded", b"kind=export_users"),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="kind"\r\n\r\nexport_users\r\n--b--',
        ),
    ]
    for content_type, body in attempts:
        response = httpx.post(
            f"{url}/api/jobs/", content=body, headers={**evil, "Content-Type": content_type}, timeout=10
        )
        assert response.status_code == 415, (content_type, response.text)
    assert queued(redis_client) == 0
    # The page's own form keeps Django's CSRF protection: no token, no job.
    response = httpx.post(f"{url}/", data={"total": "100"}, headers=evil, timeout=10)
    assert response.status_code == 403
    response = httpx.post(f"{url}/export/", headers=evil, timeout=10)
    assert response.status_code == 403
    assert queued(redis_client) == 0


def test_an_integral_float_is_a_whole_number_as_json_schema_says(url: str, redis_client: redis.Redis) -> None:
    response = httpx.post(f"{url}/api/jobs/", json={"kind": "random_users", "total": 104.0}, timeout=10)
    assert response.status_code == 202, response.text
    job = httpx.get(response.headers["location"], timeout=10).json()
    assert job["params"] == {"total": 104}
    assert queued(redis_client) == 1


# --- The contract: errors, methods --------------------------------------------------------
def test_errors_are_json_with_the_error_schema(url: str, spec: dict) -> None:
    cases = [
        ("GET", "/api/nothing-here", 404),
        ("GET", "/api/jobs/not-a-uuid", 404),
        ("GET", "/api/jobs/00000000-0000-0000-0000-000000000000", 404),
        ("GET", "/api/users/?page=999", 404),
        ("GET", "/api/users/?page=0", 400),
        ("GET", "/api/users/?page=abc", 400),
        ("GET", "/api/users/?page_size=201", 400),
        ("GET", "/api/jobs/00000000-0000-0000-0000-000000000000?wait=26", 400),
        ("GET", "/api/jobs/00000000-0000-0000-0000-000000000000?wait=-1", 400),
        ("GET", "/api/jobs/00000000-0000-0000-0000-000000000000?wait=nan", 400),
        ("GET", "/api/jobs/", 405),
        ("PUT", "/api/jobs/", 405),
        ("POST", "/api/users/", 405),
        ("DELETE", "/api/users/", 405),
        ("PATCH", "/api/jobs/00000000-0000-0000-0000-000000000000", 405),
        ("POST", "/api/openapi.json", 405),
        ("DELETE", "/api/docs/", 405),
    ]
    for method, path, status in cases:
        response = httpx.request(method, url + path, timeout=10)
        assert response.status_code == status, (method, path, response.status_code, response.text[:200])
        assert response.headers["content-type"].startswith(JSON), (method, path, response.headers)
        jsonschema.validate(response.json(), error_schema(spec))
        if status == 405:
            allowed = {m.strip() for m in response.headers["allow"].split(",")}
            assert allowed, path
            assert method not in allowed, (path, allowed)


def _get_paths(spec: dict) -> list[str]:
    samples = {"{job_id}": "00000000-0000-0000-0000-000000000000"}
    paths = []
    for path, operations in spec["paths"].items():
        if "get" in operations:
            for name, value in samples.items():
                path = path.replace(name, value)
            paths.append(path)
    return paths


PAGES = [
    "/",
    "/users/",
    "/users/?page=2",
    "/users/?page=0",
    "/api/docs/",
    "/api/openapi.json",
    "/api/openapi.yaml",
    "/static/jobs/site.css",
    "/static/ninja/redoc.standalone.js",
    "/jobs/00000000-0000-0000-0000-000000000000/",
]


def test_head_is_answered_wherever_get_is(url: str, spec: dict) -> None:
    for path in [*_get_paths(spec), *PAGES]:
        get = httpx.get(url + path, timeout=10)
        head = httpx.head(url + path, timeout=10)
        assert head.status_code == get.status_code, (path, head.status_code, get.status_code)
        assert head.content == b"", path
        assert head.headers.get("content-type") == get.headers.get("content-type"), path
        if get.status_code == 200 and "content-length" in get.headers:
            assert head.headers.get("content-length") == get.headers["content-length"], path


def test_trace_is_refused_everywhere(url: str, spec: dict) -> None:
    for path in [*_get_paths(spec), *PAGES, "/api/jobs/", "/export/", "/admin/login/"]:
        response = httpx.request("TRACE", url + path, timeout=10)
        assert response.status_code == 405, (path, response.status_code)
        assert b"TRACE /" not in response.content, f"{path} echoed the request"


def test_the_spec_is_valid_and_viewable_as_json_and_yaml(url: str, spec: dict) -> None:
    from openapi_spec_validator import validate

    validate(spec)
    assert {"/api/jobs/", "/api/jobs/{job_id}", "/api/users/", "/healthz", "/readyz"} <= set(spec["paths"])
    submit = spec["paths"]["/api/jobs/"]["post"]["responses"]
    assert {"202", "400", "415", "503"} <= set(submit)
    assert "422" not in json.dumps(spec), "django-ninja's 422 must not be in the contract"
    # A reused Idempotency-Key is a conflict with the first request's state, not a bad request.
    assert submit["409"]["description"].startswith("The Idempotency-Key"), submit["409"]
    as_yaml = httpx.get(f"{url}/api/openapi.yaml", timeout=10)
    assert as_yaml.headers["content-type"].startswith("text/plain")  # shown by a browser, not downloaded
    assert yaml.safe_load(as_yaml.text) == spec
    asked = httpx.get(f"{url}/api/openapi.yaml", headers={"Accept": "application/yaml"}, timeout=10)
    assert asked.headers["content-type"].startswith("application/yaml")


# --- Staff accounts ------------------------------------------------------------------------
def test_staff_accounts_are_never_listed_nor_exported(site: Fleet, url: str) -> None:
    script = (
        "from django.contrib.auth.models import User\n"
        "User.objects.create_superuser('root-admin', 'root@example.org', 'pw-not-used')\n"
        "User.objects.create_user('staff-only', 'staff@example.org', is_staff=True)\n"
        "User.objects.create_user('plain-person', 'plain@example.org')\n"
    )
    subprocess.run(roles.manage_argv("shell", "-c", script), env=site.env, check=True, timeout=120)
    listed = httpx.get(f"{url}/api/users/?page_size=200", timeout=10).json()
    names = {u["username"] for u in listed["results"]}
    assert "plain-person" in names
    assert not names & {"root-admin", "staff-only"}
    assert listed["count"] == len(listed["results"])
    page = httpx.get(f"{url}/users/", timeout=10).text
    assert "plain-person" in page
    assert "root-admin" not in page
    assert "staff@example.org" not in page

    site.start_worker(name="export-worker", extra_env={"JOBS_STEP_DELAY": "0"})
    job = httpx.post(f"{url}/api/jobs/", json={"kind": "export_users"}, timeout=10).json()
    done = wait_until(
        lambda: (
            (j := httpx.get(f"{job['url']}?wait=10", timeout=20).json())["state"] in ("SUCCESS", "FAILURE")
            and j
        ),
        timeout=90,
        what="the export",
    )
    assert done["state"] == "SUCCESS", done
    csv_text = httpx.get(done["download_url"], timeout=10).text
    assert "plain-person" in csv_text
    assert "root-admin" not in csv_text
    assert "staff@example.org" not in csv_text
    assert done["download_bytes"] == len(csv_text.encode())


# Last in the module: it fills the shared site with jobs and users.
def test_schemathesis_with_all_checks_finds_nothing(site: Fleet, url: str, tmp_path: Path) -> None:
    # A worker, so the jobs schemathesis submits finish and its long-polls answer early.
    site.start_worker(name="contract-worker", extra_env={"JOBS_STEP_DELAY": "0"})
    st = Path(sys.executable).with_name("st")
    run = subprocess.run(
        [
            str(st),
            "run",
            f"{url}/api/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "60",
            # One worker: schemathesis's own generator is not thread-safe on Python 3.11 (SystemError).
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--seed",
            "20261201",
            "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    summary = run.stdout[run.stdout.rfind("SUMMARY") :]
    print(summary)
    assert run.returncode == 0, run.stdout[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert counts, summary
    assert int(counts[1]) >= 300, summary
    assert counts[1] == counts[2], summary
