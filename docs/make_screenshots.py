"""Screenshots of the dashboard's main pages, into docs/screenshots/ (README.rst shows one).

    python docs/make_screenshots.py

Needs what the browser test needs: Debian's ``chromium`` and ``pip install playwright`` (the
test extras), and the test plugin (tests/testplugin). Runs real gunicorn and the worker on a
temporary store: a day of events stored through the store's own ingest (back-dated, so that
the overview's chart has a shape), then real Dolibarr-shaped posts; one plugin that always
fails on orders (dead letters), one that records everything.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from dolibarr_webhooks.samples import sample_body
from dolibarr_webhooks.store import Store
from dolibarr_webhooks.testing import make_event, running_service, wait_for

HERE = Path(__file__).resolve().parent
OUT = HERE / "screenshots"
PASSWORD = "screenshots password"
COMPANIES = ["Acme Industries", "Boulangerie Martin", "Garage du Centre", "Nordic Timber AB", "Cabinet Lefèvre"]


def body(code: str, **overrides) -> bytes:
    data = json.loads(sample_body(code))
    data["object"].update(overrides)
    return json.dumps(data).encode()


def backfill(url: str, plugins: list[str]) -> None:
    """A day of history, through Store.ingest as the receiver stores events."""
    store = Store(url)
    rng = random.Random(13)
    now = datetime.now(timezone.utc)
    codes = ["BILL_VALIDATE", "BILL_PAYED", "COMPANY_CREATE", "ORDER_VALIDATE", "PROPAL_CLOSE_SIGNED"]
    for n in range(260):
        code = rng.choice(codes)
        hours_ago = rng.triangular(0, 24, 14)
        overrides = {"name": rng.choice(COMPANIES)} if code == "COMPANY_CREATE" else \
            {"ref": f"{'FA' if code.startswith('BILL') else 'CO' if code.startswith('ORDER') else 'PR'}2612-{n:04d}"}
        if code.endswith("_VALIDATE"):
            overrides["newref"] = overrides["ref"]  # the definitive reference Dolibarr gives at validation
        event = make_event(code, dolibarr_url="https://erp.example.com", id=1000 + n, **overrides)
        event = dataclasses.replace(event, id=f"evt_backfill{n:020d}", received_at=now - timedelta(hours=hours_ago))
        store.ingest(event, [p for p in plugins if p != "failer" or code == "ORDER_VALIDATE"])
    store.dispose()


def main() -> int:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dw-screens-") as folder:
        shoot(Path(folder))
    return 0


def shoot(work: Path) -> None:
    from playwright.sync_api import sync_playwright

    env = {"DOLIBARR_WEBHOOKS_ADMIN_PASSWORD": PASSWORD, "DOLIBARR_WEBHOOKS_DOLIBARR_URL": "https://erp.example.com",
           "DOLIBARR_WEBHOOKS_FAILER_MODE": "always", "DOLIBARR_WEBHOOKS_FAILER_EVENTS": "ORDER_VALIDATE",
           "DOLIBARR_WEBHOOKS_RECORDER_FILE": str(work / "recorder.jsonl"),
           "DOLIBARR_WEBHOOKS_RETRY_SCHEDULE": "200ms,400ms"}
    with running_service(env=env) as service:
        backfill(service.env["DOLIBARR_WEBHOOKS_DATABASE_URL"], ["failer", "recorder", "log"])
        service.post(body("COMPANY_CREATE", id=42, name="Acme Industries", email="billing@acme.example"))
        invoice = service.post(body("BILL_PAYED", id=3311, ref="FA2612-0003", total_ttc="2243.76",
                                    thirdparty={"id": 42, "name": "Acme Industries"})).json()["id"]
        service.post(body("PROPAL_CLOSE_SIGNED"))
        order = service.post(body("ORDER_VALIDATE", id=77)).json()["id"]
        service.post(b"")  # a body Dolibarr could not encode: quarantined
        wait_for(lambda: not any(service.stats()["deliveries"][state] for state in ("pending", "running", "failed")),
                 60, interval=0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 860}, locale="en-GB")
            page.goto(service.url + "/admin/login")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            shots = [("overview", "/admin/"), ("events", "/admin/events"),
                     ("event", f"/admin/events/{invoice}"), ("dead-letter", f"/admin/events/{order}"),
                     ("failures", "/admin/failures"), ("plugins", "/admin/plugins"),
                     ("events-fr", "/admin/events?lang=fr")]
            for name, path in shots:
                page.goto(service.url + path)
                page.screenshot(path=str(OUT / f"{name}.png"), full_page=name != "events")
                print(OUT / f"{name}.png")
            browser.close()


if __name__ == "__main__":
    sys.exit(main())
