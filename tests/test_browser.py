"""What a person does on the dashboard, in a real browser (Debian's chromium, headless, driven
by Playwright) against real gunicorn and the worker process: log in, find an invoice by its
reference, open it, replay its dead delivery to a plugin that now succeeds, see it delivered
(the page refreshes itself); a forged CSRF token is refused; logged out, every page leads
to the login."""

from __future__ import annotations

import os
import re

import pytest
from dolibarr_webhooks_testplugin import body, read_records

from dolibarr_webhooks.testing import running_service, wait_for

from production_helpers import require_tool

pytestmark = pytest.mark.slow

PASSWORD = "browser test password 42"
PAGES = ["/admin/", "/admin/events", "/admin/failures", "/admin/quarantine", "/admin/plugins"]


@pytest.fixture(scope="module")
def browser():
    chromium = require_tool("chromium", "chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed (pip install playwright)")
        pytest.skip("playwright is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where chromium's sandbox cannot start.
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_find_an_invoice_replay_its_dead_delivery_and_see_it_delivered(browser, tmp_path):
    env = {"DOLIBARR_WEBHOOKS_ADMIN_PASSWORD": PASSWORD,
           # Fails twice, then succeeds: with one retry, the invoice's delivery dies first.
           "DOLIBARR_WEBHOOKS_FAILER_MODE": "times:2", "DOLIBARR_WEBHOOKS_FAILER_FILE": str(tmp_path / "failer.jsonl"),
           "DOLIBARR_WEBHOOKS_FAILER_EVENTS": "BILL_PAYED", "DOLIBARR_WEBHOOKS_RETRY_SCHEDULE": "100ms"}
    with running_service(env=env) as service:
        service.post(body("COMPANY_CREATE", object_id=12, name="Acme Industries"))
        service.post(body("BILL_PAYED", ref="FA2612-0003", total_ttc="2243.76"))
        service.post(body("BILL_PAYED", object_id=999, ref="FA2612-0004"))
        wait_for(lambda: service.stats()["plugins"].get("failer", {}).get("dead") == 2, 30,
                 message=lambda: service.logs(tail=3000))

        page = browser.new_page(locale="en-GB")
        page.goto(service.url + "/admin/events")
        assert "/admin/login" in page.url
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        assert page.url.endswith("/admin/events")

        page.fill("input[name=q]", "FA2612-0003")
        page.press("input[name=q]", "Enter")
        page.wait_for_url(re.compile(r"q=FA2612-0003"))
        assert "FA2612-0004" not in page.inner_text("#live")
        page.click("text=Invoice FA2612-0003 paid: 2,243.76 EUR incl. tax")
        failer = page.locator("section[data-plugin=failer]")
        assert "dead" in failer.inner_text() and "fails attempt 2 of 2 on purpose" in failer.inner_text()
        payload = page.inner_text(".payload")
        assert "FA2612-0003" in payload

        # A form whose token was tampered with is refused, and nothing is replayed.
        page.evaluate("document.querySelector('section[data-plugin=failer] input[name=csrf_token]').value = 'forged'")
        page.click("section[data-plugin=failer] button")
        assert "did not come from this page" in page.inner_text("main")
        page.go_back()
        page.reload()

        page.click("section[data-plugin=failer] button")
        assert "1 delivery scheduled again" in page.inner_text("main")
        # Nobody reloads: the page's own refresh shows the worker's delivery.
        page.wait_for_function(
            "document.querySelector('section[data-plugin=failer] .status').textContent.trim() === 'delivered'",
            timeout=30_000)
        attempts = read_records(tmp_path / "failer.jsonl")
        assert [a["attempt"] for a in attempts if a["event"] in page.url] == [1, 2, 3]

        page.click("text=Log out")
        assert "/admin/login" in page.url
        for path in PAGES:
            page.goto(service.url + path)
            assert "/admin/login" in page.url, path
            assert page.locator("input[name=password]").count() == 1
        page.close()
