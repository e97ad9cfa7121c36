"""A person's path through the site, in headless Chromium (Debian's) driven by Playwright."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

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


def test_form_progress_bar_result_and_users_list(fleet: Fleet, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url = fleet.start_web()
    fleet.start_worker(extra_env={"JOBS_STEP_DELAY": "0.15"})
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
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
        expect(page.locator("table tbody")).to_contain_text("No jobs yet.")

        # Good input: the job page, a moving progress bar, success and the callback.
        page.fill("input[name=total]", "120")
        page.click("#generate")
        expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f-]{36}/$"))
        seen: set[int] = set()
        page.expose_function("record", lambda value: seen.add(int(value)))
        page.evaluate(
            """() => new MutationObserver(() => window.record(document.getElementById('progress').value))
                 .observe(document.getElementById('progress'), {attributes: true})"""
        )
        expect(page.locator("#state")).to_have_text("SUCCESS", timeout=60_000)
        expect(page.locator("#callbacks")).to_have_text("on_success", timeout=30_000)
        expect(page.locator("#progress")).to_have_js_property("value", 100)
        assert any(0 < v < 100 for v in seen), (
            f"the progress bar never showed a value between 0 and 100: {sorted(seen)}"
        )
        expect(page.locator("#result-json")).to_contain_text('"created": 120')
        page.screenshot(path=str(tmp_path / "job.png"))

        page.click("text=Users")
        expect(page.locator("#user-count")).to_have_text("(120)")
        assert page.locator("#users tbody tr").count() == 50  # first page
        browser.close()
