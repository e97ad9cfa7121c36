"""A person's path through the site, in headless Chromium (Debian's) driven by Playwright.

Every page is looked at twice, at a desktop width and a phone's (390 px), with a screenshot of
each (``BROWSER_SCREENSHOTS=dir`` keeps them; otherwise they land in the test's tmp folder), and
checked for what a person would notice: nothing wider than the screen, the facts on the page.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from celery_fleet import roles
from tests.support.fleet import Fleet

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (make test installs it)"
    ),
]
# As root, in a sandbox with no network: no sandbox, nothing that calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("BROWSER_SCREENSHOTS", tmp_path / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def look(page: Any, shots: Path, name: str) -> None:
    """A screenshot, and the check a person makes first: nothing runs off the side of the screen."""
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{name}: the page is {overflow} px wider than the screen"


def test_form_progress_bar_result_and_users_list(fleet: Fleet, browser: Any, shots: Path) -> None:
    from playwright.sync_api import expect

    url = fleet.start_web()
    fleet.start_worker(extra_env={"JOBS_STEP_DELAY": "0.15"})
    page = browser.new_page(viewport=DESKTOP)
    page.goto(f"{url}/users/")
    expect(page.locator("#user-count")).to_have_text("(0)")

    # Bad input: a clear message, and no job.
    page.goto(url + "/")
    page.fill("input[name=total]", "5000")
    page.click("#generate")
    expect(page.locator("#total-error")).to_contain_text("Enter a whole number from 50 to 500.")
    page.fill("input[name=total]", "twelve")
    page.click("#generate")
    expect(page.locator("#total-error")).to_contain_text("Enter a whole number from 50 to 500.")
    expect(page.locator("#recent tbody")).to_contain_text("No jobs yet.")
    look(page, shots, "home-error-desktop")

    # Good input: the job page, a moving progress bar, then the finished page with its facts.
    page.fill("input[name=total]", "120")
    page.click("#generate")
    expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f-]{36}/$"))
    seen: set[int] = set()
    page.expose_function("record", lambda value: seen.add(int(value)))
    page.evaluate(
        """() => new MutationObserver(() => window.record(document.getElementById('progress').value))
             .observe(document.getElementById('progress'), {attributes: true})"""
    )
    expect(page.locator("#state")).to_have_text("Done", timeout=60_000)
    expect(page.locator("#callbacks")).to_have_text("on_success", timeout=30_000)
    assert any(0 < v < 100 for v in seen), (
        f"the progress bar never showed a value between 0 and 100: {sorted(seen)}"
    )
    expect(page.locator("#result-summary")).to_have_text("120 users made.")
    expect(page.locator("#finished")).to_be_visible()
    expect(page.locator("#ran-for")).to_have_text(re.compile(r"^ran \d+(\.\d)? s$"))
    look(page, shots, "job-random-users-desktop")
    job_url = page.url

    # The link to the users it made: that job's users only.
    page.click("#users-link")
    expect(page.locator("#user-count")).to_have_text("(120)")
    expect(page.locator(".filter")).to_contain_text("Made by the job")
    assert page.locator("#users tbody tr").count() == 50  # first page
    look(page, shots, "users-of-a-job-desktop")

    # An export: its size and a download link that serves the CSV.
    page.goto(url + "/")
    page.click("#export")
    expect(page.locator("#state")).to_have_text("Done", timeout=60_000)
    expect(page.locator("#result-summary")).to_contain_text("120 users exported")
    link = page.locator("#download-link")
    expect(link).to_contain_text(re.compile(r"Download the CSV \([\d.]+\s(KB|bytes)\)"))
    with page.expect_download() as download:
        link.click()
    assert download.value.suggested_filename.endswith(".csv")
    assert Path(download.value.path()).read_text().count("\n") == 121  # header + 120 users
    look(page, shots, "job-export-desktop")

    # The same pages on a phone.
    phone = browser.new_page(viewport=PHONE)
    for name, path in [
        ("home", "/"),
        ("job-random-users", job_url.removeprefix(url)),
        ("users", "/users/"),
        ("users-page-2", "/users/?page=2"),
    ]:
        phone.goto(url + path)
        look(phone, shots, f"{name}-phone")
    page.goto(url + "/")
    look(page, shots, "home-desktop")
    page.goto(url + "/users/")
    look(page, shots, "users-desktop")


def test_bad_page_numbers_say_so_as_the_api_does(fleet: Fleet, browser: Any, shots: Path) -> None:
    from playwright.sync_api import expect

    url = fleet.start_web()
    page = browser.new_page(viewport=PHONE)
    for query, status, message in [
        ("page=0", 400, "must be a whole number"),
        ("page=abc", 400, "must be a whole number"),
        ("page=999", 404, "There is no page 999"),
        ("job=00000000-0000-0000-0000-000000000000", 404, "There is no job"),
    ]:
        response = page.goto(f"{url}/users/?{query}")
        assert response is not None
        assert response.status == status, (query, response.status)
        api = httpx.get(f"{url}/api/users/?{query}", timeout=10)
        assert api.status_code == status, (query, api.status_code)
        expect(page.locator("#page-error")).to_contain_text(message)
    look(page, shots, "users-bad-page-phone")


def test_api_docs_render_from_local_files_and_the_spec_shows_in_the_browser(
    fleet: Fleet, browser: Any, shots: Path
) -> None:
    from playwright.sync_api import expect

    url = fleet.start_web()
    for viewport, suffix in [(DESKTOP, "desktop"), (PHONE, "phone")]:
        page = browser.new_page(viewport=viewport)
        loaded: list[str] = []
        page.on("requestfinished", lambda r, loaded=loaded: loaded.append(r.url))
        response = page.goto(f"{url}/api/docs/")
        # Redoc renders the operations of the generated spec, from ninja's own static files...
        expect(page.locator("#redoc-ui")).to_contain_text("Submit a job", timeout=30_000)
        expect(page.locator("#redoc-ui")).to_contain_text("A job's state, progress and result")
        # ... and nothing else: the page's policy forbids any other origin (this sandbox has no
        # network either, so the header is what proves it for a real browser).
        assert "img-src 'self' data:" in response.headers["content-security-policy"]
        elsewhere = [u for u in loaded if not u.startswith((url, "blob:" + url, "data:"))]
        assert not elsewhere, f"the docs page loaded from elsewhere: {elsewhere}"
        look(page, shots, f"api-docs-{suffix}")
    # The raw spec opens in the browser (no download), as JSON and as YAML.
    page = browser.new_page(viewport=DESKTOP)
    page.goto(f"{url}/api/docs/")
    page.click("#spec-yaml")
    expect(page.locator("body")).to_contain_text("openapi: 3.1.0")
    page.goto(f"{url}/api/openapi.json")
    expect(page.locator("body")).to_contain_text('"openapi"')
    look(page, shots, "openapi-json-desktop")


def test_the_admin_shows_jobs_read_only_and_no_schedule_beat_ignores(
    fleet: Fleet, browser: Any, shots: Path
) -> None:
    from playwright.sync_api import expect

    url = fleet.start_web()
    subprocess.run(
        roles.manage_argv(
            "createsuperuser", "--no-input", "--username", "admin", "--email", "admin@example.org"
        ),
        env={**fleet.env, "DJANGO_SUPERUSER_PASSWORD": "a-long-test-password"},
        check=True,
        timeout=120,
    )
    job = httpx.post(f"{url}/api/jobs/", json={"kind": "export_users"}, timeout=10).json()
    page = browser.new_page(viewport=DESKTOP)
    page.goto(f"{url}/admin/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "a-long-test-password")
    page.click("input[type=submit]")
    expect(page.locator("#content")).to_contain_text("Jobs")
    # RedBeat is the scheduler: django-celery-beat's tables are not offered for editing.
    expect(page.locator("#content")).not_to_contain_text("Periodic tasks")
    look(page, shots, "admin-index-desktop")
    page.goto(f"{url}/admin/jobs/job/{job['id']}/change/")
    expect(page.locator("#content")).to_contain_text("PENDING")
    assert page.locator("select[name=state], input[name=progress]").count() == 0, "job fields are editable"
    assert page.locator("input[name=_save]").count() == 0
    look(page, shots, "admin-job-desktop")
    phone = browser.new_page(viewport=PHONE)
    phone.context.add_cookies(page.context.cookies())
    phone.goto(f"{url}/admin/jobs/job/")
    look(phone, shots, "admin-jobs-phone")
