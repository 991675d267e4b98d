"""The web dashboard (/admin/) through Flask's test client, on SQLite and PostgreSQL: access,
sessions and CSRF, what each page shows, and that its replays are the CLI's."""

from __future__ import annotations

import random
import re
import time
from urllib.parse import quote

import pytest
from sqlalchemy import event as sa_event
from dolibarr_webhooks_testplugin import (CSRF_TOKEN, body, by_plugin, command, csrf_token, dashboard_login, files_open,
                                          handler_config, running_worker)
from hostile_helpers import ODD_TEXT

from dolibarr_webhooks.testing import WEBHOOKS_TEST_SECRET, deliver_until_idle, wait_for

PASSWORD = "correct horse battery staple"
PLUGIN_PASSWORD = "plugin-password-4f9a2c"
PAGES = ["/admin/", "/admin/events", "/admin/failures", "/admin/quarantine", "/admin/plugins"]


@pytest.fixture
def handlers(tmp_path):
    config = handler_config(tmp_path, recorder=True, failer="always")
    config["recorder"]["api_password"] = PLUGIN_PASSWORD  # a plugin credential: never shown
    return config


@pytest.fixture
def app(make_app, handlers):
    return make_app(handlers, ADMIN_PASSWORD=PASSWORD, RETRY_SCHEDULE="10ms", DOLIBARR_URL="https://erp.example")


@pytest.fixture
def client(app):
    return app.test_client()


def post(client, code: str = "BILL_PAYED", **overrides) -> str:
    response = client.post(f"/webhook/{WEBHOOKS_TEST_SECRET}", data=body(code, **overrides))
    assert response.status_code in (200, 202), response.text
    return response.json["id"]


def login(client, password: str = PASSWORD, **headers):
    return dashboard_login(client, password, **headers)


@pytest.fixture
def logged_in(client):
    assert login(client).status_code == 302
    return client


def test_no_password_no_dashboard(make_app):
    client = make_app().test_client()
    for path in [*PAGES, "/admin/login"]:
        response = client.get(path)
        assert response.status_code == 404 and response.is_json


def test_logged_out_every_page_redirects_to_the_login(client):
    for path in [*PAGES, "/admin/events/evt_x", "/admin/?fragment=1"]:
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/admin/login?next=")
    for path in ["/admin/events/evt_x/replay", "/admin/failures/replay", "/admin/quarantine/reprocess"]:
        response = client.post(path, data={"csrf_token": "x"})
        assert response.status_code == 302 and response.headers["Location"] == "/admin/login"
    assert client.get("/admin/login").status_code == 200
    with client.get("/admin/static/admin.js") as script:  # what the login page needs
        assert script.status_code == 200


def test_login_session_cookie_and_logout(client):
    refused = login(client, "wrong password")
    assert refused.status_code == 401 and "Wrong user name or password" in refused.text
    response = login(client)
    assert response.status_code == 302 and response.headers["Location"] == "/admin/"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/admin/" in cookie
    assert "Secure" not in cookie  # plain http
    assert client.get("/admin/events").status_code == 200
    # Back where the login was asked for, and never elsewhere.
    client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/")})
    assert client.get("/admin/").status_code == 302
    token = csrf_token(client)
    back = client.post("/admin/login", data={"username": "admin", "password": PASSWORD, "csrf_token": token,
                                             "next": "/admin/events?q=FA"})
    assert back.headers["Location"] == "/admin/events?q=FA"
    client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/")})
    away = client.post("/admin/login", data={"username": "admin", "password": PASSWORD,
                                             "csrf_token": csrf_token(client), "next": "//evil.example/admin/"})
    assert away.headers["Location"] == "/admin/"


def test_wrong_passwords_are_rate_limited_per_address(client):
    for _ in range(5):
        assert login(client, "guess").status_code == 401
    limited = login(client)  # even the right one, for a minute
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "60"
    assert client.get("/admin/").status_code == 302


def test_the_cookie_is_secure_over_https_and_follows_the_sub_path(make_app):
    """Behind nginx at /hooks/ (the prefix stripped, X-Forwarded-Prefix set) over HTTPS. The
    test client would not send a cookie of path /hooks/admin/ to /admin/: the browser does, so
    the cookie is passed by hand."""
    app = make_app(ADMIN_PASSWORD=PASSWORD, TRUSTED_PROXIES=1)
    client = app.test_client(use_cookies=False)
    proxy = {"X-Forwarded-Proto": "https", "X-Forwarded-Prefix": "/hooks"}
    first = client.get("/admin/", headers=proxy)
    assert first.headers["Location"].startswith("/hooks/admin/login")
    page = client.get("/admin/login", headers=proxy)
    assert 'action="/hooks/admin/login"' in page.text and "/hooks/admin/static/admin.css" in page.text
    cookie = page.headers["Set-Cookie"]
    assert "Secure" in cookie and "Path=/hooks/admin/" in cookie and "HttpOnly" in cookie
    token = CSRF_TOKEN.search(page.text).group(1)
    response = client.post("/admin/login", headers={**proxy, "Cookie": cookie.split(";")[0]},
                           data={"username": "admin", "password": PASSWORD, "csrf_token": token})
    assert response.headers["Location"] == "/hooks/admin/"
    session = response.headers["Set-Cookie"].split(";")[0]
    events = client.get("/admin/events", headers={**proxy, "Cookie": session})
    assert events.status_code == 200 and 'href="/hooks/admin/failures"' in events.text
    # Without trusted proxies, the headers mean nothing.
    plain = make_app(ADMIN_PASSWORD=PASSWORD).test_client()
    assert plain.get("/admin/", headers=proxy).headers["Location"].startswith("/admin/login")


def test_csrf_token_required_on_every_form(logged_in, app):
    event_id = post(logged_in)
    deliver_until_idle(app)
    before = by_plugin(app, event_id)["failer"]
    assert before["status"] == "dead"
    for token in (None, "forged", csrf_token(logged_in.application.test_client())):
        data = {"plugin": "failer"} if token is None else {"plugin": "failer", "csrf_token": token}
        refused = logged_in.post(f"/admin/events/{event_id}/replay", data=data)
        assert refused.status_code == 400 and "did not come from this page" in refused.text
    assert by_plugin(app, event_id)["failer"]["status"] == "dead"
    # The login form too.
    fresh = app.test_client()
    assert fresh.post("/admin/login", data={"username": "admin", "password": PASSWORD}).status_code == 400


def test_sessions_hold_across_processes_and_end_with_the_password(make_app, tmp_path):
    """Two apps on one store stand for two gunicorn processes: one generated key serves both."""
    first, second = make_app(ADMIN_PASSWORD=PASSWORD), make_app(ADMIN_PASSWORD=PASSWORD)
    assert first.secret_key == second.secret_key
    assert first.secret_key != make_app(ADMIN_PASSWORD="another password here").secret_key
    assert make_app(ADMIN_PASSWORD=PASSWORD, ADMIN_SECRET_KEY="k" * 32).secret_key != first.secret_key


def test_a_key_that_cannot_be_kept_is_a_clear_error(make_app, tmp_path):
    """Where the key file cannot be written (here: a folder in its place, which even root
    cannot open as a file), start-up names the setting that avoids it."""
    from dolibarr_webhooks import ConfigError

    (tmp_path / "dolibarr-webhooks-admin.key").mkdir()
    with pytest.raises(ConfigError, match="DOLIBARR_WEBHOOKS_ADMIN_SECRET_KEY"):
        make_app(ADMIN_PASSWORD=PASSWORD, DATABASE_URL=f"sqlite:///{tmp_path / 'store.sqlite3'}")
    # The failed start-up closed the store it had opened: no file of it is left open for the
    # garbage collector to find (Python 3.13 warns of such an SQLite connection).
    assert files_open(tmp_path / "store.sqlite3") == []
    assert make_app(ADMIN_PASSWORD=PASSWORD, ADMIN_SECRET_KEY="x" * 32,
                    DATABASE_URL=f"sqlite:///{tmp_path / 'store.sqlite3'}").secret_key


def test_events_page_says_what_happened_finds_and_filters(logged_in, app):
    invoice = post(logged_in, "BILL_PAYED", ref="FA2612-0003", total_ttc="2243.76")
    company = post(logged_in, "COMPANY_CREATE", object_id=77, name="Acme Industries")
    post(logged_in, "ORDER_VALIDATE")
    page = logged_in.get("/admin/events")
    assert "Invoice FA2612-0003 paid: 2,243.76 EUR incl. tax" in page.text
    assert "Third party Acme Industries created" in page.text
    found = logged_in.get("/admin/events?q=fa2612-00").text
    assert invoice in found and company not in found
    assert company in logged_in.get("/admin/events?q=ACME").text
    assert invoice in logged_in.get(f"/admin/events?q={invoice}").text
    assert invoice not in logged_in.get("/admin/events?q=%25").text  # a LIKE wildcard is a character
    by_code = logged_in.get("/admin/events?code=company_create").text
    assert company in by_code and invoice not in by_code
    deliver_until_idle(app)
    dead = logged_in.get("/admin/events?status=dead").text
    assert invoice in dead and "failer" in dead
    assert invoice not in logged_in.get("/admin/events?status=pending").text
    assert invoice not in logged_in.get("/admin/events?since=2099-01-01").text
    french = logged_in.get("/admin/events", headers={"Accept-Language": "fr-FR,fr;q=0.9"}).text
    assert "Facture FA2612-0003 payée" in french and "Événements" in french
    fragment = logged_in.get("/admin/events?fragment=1").text
    assert "<html" not in fragment and invoice in fragment


def test_events_are_paged_newest_first(logged_in):
    ids = [post(logged_in, "COMPANY_CREATE", object_id=i) for i in range(55)]
    first = logged_in.get("/admin/events").text
    assert ids[-1] in first and ids[5] in first and ids[4] not in first
    older = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    second = logged_in.get(older).text
    assert all(event_id in second for event_id in ids[:5]) and ids[5] not in second
    assert 'rel="next"' not in second


def test_event_page_payload_attempts_and_replay(logged_in, app, tmp_path):
    event_id = post(logged_in, "COMPANY_CREATE", pass_indatabase="hunter2-clear-password",
                    webservices_key="key-0123456789")
    deliver_until_idle(app)
    page = logged_in.get(f"/admin/events/{event_id}").text
    assert "[scrubbed]" in page and "hunter2-clear-password" not in page and "key-0123456789" not in page
    assert "https://erp.example/societe/card.php?socid=" in page
    assert "failer fails attempt 2 on purpose" in page  # every attempt, with its error
    assert page.count('name="plugin" value="failer"') == 1
    cli_before = command(app, "show", event_id, "--json")
    # Replay one plugin: Store.replay, as `dolibarr-webhooks replay EVENT --plugin failer`.
    token = csrf_token(logged_in, "/admin/")
    response = logged_in.post(f"/admin/events/{event_id}/replay", data={"plugin": "failer", "csrf_token": token})
    assert response.status_code == 302
    assert "1 delivery scheduled again" in logged_in.get(response.headers["Location"]).text
    after = by_plugin(app, event_id)
    assert after["failer"]["status"] == "pending" and after["failer"]["attempts"] == 0
    assert after["recorder"]["status"] == "delivered"
    assert {d["plugin"] for d in cli_before["deliveries"]} >= {"failer", "recorder"}
    # And for every plugin.
    logged_in.post(f"/admin/events/{event_id}/replay", data={"csrf_token": token})
    assert by_plugin(app, event_id)["recorder"]["status"] == "pending"
    assert logged_in.get("/admin/events/evt_nothing").status_code == 404


def test_any_text_in_a_filter_gets_a_page(logged_in, app):
    """A NUL, which PostgreSQL's text cannot hold, and U+10FFFF, past which no character comes,
    answered 500; a NUL finds what was stored with one (as ``\\u0000``, the column's form)."""
    nul = post(logged_in, "BILL_PAYED", ref="FA\x00Z")
    for query in ("q=%00", "q=fa%00", "q=%F4%8F%BF%BF", "q=x%F4%8F%BF%BF", "q=%ED%9F%BF", "code=a%00",
                  "source=%00"):
        assert logged_in.get(f"/admin/events?{query}").status_code == 200, query
    assert logged_in.get("/admin/failures?plugin=%00").status_code == 200
    assert nul in logged_in.get("/admin/events?q=fa%00z").text


def test_odd_text_in_every_filter_of_every_page_gets_a_page(logged_in):
    """Seeded: a failing query comes back with the same seed."""
    post(logged_in, "BILL_PAYED")
    rng = random.Random(3)
    names = ["q", "code", "source", "status", "since", "until", "before", "plugin", "lang", "fragment", "view"]
    for _ in range(150):
        query = "&".join(f"{name}={quote(rng.choice(ODD_TEXT).encode('utf-8', 'surrogatepass'))}"
                         for name in rng.sample(names, 3))
        path = f"{rng.choice(PAGES)}?{query}"
        assert logged_in.get(path).status_code < 500, path


def test_forms_no_page_offers_get_an_answer(logged_in, app):
    """What only a forged request sends: an id holding a NUL (PostgreSQL's text cannot take
    one: 500), a plugin no form lists (its delivery was created, never to be claimed)."""
    event_id = post(logged_in, "BILL_PAYED")
    deliver_until_idle(app)
    before = by_plugin(app, event_id)
    assert logged_in.get("/admin/events/evt%00").status_code == 404
    token = csrf_token(logged_in, "/admin/")
    for path, form in ((f"/admin/events/{event_id}/replay", {"plugin": "recorderr"}),
                       ("/admin/failures/replay", {"plugin": "recorderr"}),
                       ("/admin/events/evt%00/replay", {}), (f"/admin/events/{event_id}/replay", {"plugin": "a\x00"}),
                       ("/admin/quarantine/reprocess", {"event_id": "evt\x00"})):
        response = logged_in.post(path, data={"csrf_token": token, **form})
        assert response.status_code == 302, (path, form, response.status_code)
    assert "no plugin named &#39;recorderr&#39;" in logged_in.get(f"/admin/events/{event_id}").text
    assert by_plugin(app, event_id) == before


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_search_finds_a_reference_ending_in_9_whatever_the_collation(icu_postgres_database_url,
                                                                         make_app, handlers):
    """The prefix search's range, "fa2612-0009" up to "fa2612-000:", held nothing in such a
    collation: it is in code point order now, and still answered by the indexes."""
    app = make_app(handlers, ADMIN_PASSWORD=PASSWORD, DATABASE_URL=icu_postgres_database_url)
    store = app.extensions["dolibarr_webhooks"].store
    client = app.test_client()
    assert login(client).status_code == 302
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT 'fa2612-0009' < 'fa2612-000:'").scalar() is False
    nine = post(client, "BILL_PAYED", ref="FA2612-0009")
    quartz = post(client, "COMPANY_CREATE", object_id=78, name="Quartz")
    for term, found in (("FA2612-0009", nine), ("fa2612-000", nine), ("QUARTZ", quartz), ("quartz", quartz)):
        assert found in client.get(f"/admin/events?q={term}").text, term

    searches: list[tuple[str, dict]] = []

    def keep(conn, cursor, statement, parameters, context, executemany):
        if 'COLLATE "C"' in statement:
            searches.append((statement, parameters))
    sa_event.listen(store.engine, "before_cursor_execute", keep)
    client.get("/admin/events?q=fa2612-0009")
    sa_event.remove(store.engine, "before_cursor_execute", keep)
    (statement, parameters), = searches
    with store.engine.connect() as conn:
        driver = conn.connection.driver_connection
        with driver.transaction(force_rollback=True):
            driver.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(row[0] for row in driver.execute("EXPLAIN " + statement, parameters))
    assert "ix_events_ref_search" in plan and "ix_events_label_search" in plan, plan


def test_a_forged_lone_surrogate_is_shown_as_its_escape(logged_in, app):
    """Kept as sent (test_hostile); a page and ``show --json`` are UTF-8, which cannot hold a
    lone surrogate: they show the escape it came as, where the page answered 500."""
    response = logged_in.post(f"/webhook/{WEBHOOKS_TEST_SECRET}",
                              data=b'{"triggercode":"BILL_PAYED","object":{"id":7,"note":"a\\udfffb","\\ud800":[1]}}')
    event_id = response.json["id"]
    deliver_until_idle(app)
    for path in [*PAGES, f"/admin/events/{event_id}"]:
        assert logged_in.get(path).status_code == 200, path
    page = logged_in.get(f"/admin/events/{event_id}").text
    assert "&#34;a\\udfffb&#34;" in page and '<span class="json-key">\\ud800</span>' in page
    shown = command(app, "show", event_id, "--json")
    assert shown["payload"]["object"]["note"] == "a\udfffb", "read back as the body had it"


def test_no_page_shows_a_secret(logged_in, app):
    post(logged_in)
    logged_in.post(f"/webhook/{WEBHOOKS_TEST_SECRET}", data=b"")  # quarantined
    deliver_until_idle(app)
    event_id = post(logged_in, "COMPANY_CREATE", object_id=5)
    for path in [*PAGES, f"/admin/events/{event_id}", "/admin/events?lang=fr"]:
        text = logged_in.get(path).text
        for secret in (WEBHOOKS_TEST_SECRET, PASSWORD, PLUGIN_PASSWORD):
            assert secret not in text, (path, secret)


def test_failures_grouped_and_replayed_all(logged_in, app):
    for i in range(3):
        post(logged_in, "COMPANY_CREATE", object_id=i)
    deliver_until_idle(app)
    page = logged_in.get("/admin/failures").text
    assert "failer fails attempt 2 on purpose" in page and ">3<" in page
    assert "recorder" not in re.sub(r"<option.*?</option>", "", page)
    token = csrf_token(logged_in, "/admin/failures")
    response = logged_in.post("/admin/failures/replay",
                              data={"csrf_token": token, "plugin": "failer", "status": "dead"})
    assert response.status_code == 302
    stats = command(app, "stats", "--json")
    assert stats["plugins"]["failer"]["pending"] == 3 and stats["plugins"]["failer"]["dead"] == 0
    assert "Nothing failed." in logged_in.get("/admin/failures").text


def test_quarantine_lists_and_reprocesses(logged_in, app):
    unparseable = b'{"triggercode": "BILL_PAYED", "object": {"pass": "xyz-secret"}, ,'
    logged_in.post(f"/webhook/{WEBHOOKS_TEST_SECRET}", data=unparseable)
    page = logged_in.get("/admin/quarantine").text
    assert "bytes" in page and "xyz-secret" not in page  # the raw body was masked when it was kept
    event_id = re.search(r"<code>(evt_[0-9a-f]+)</code>", page).group(1)
    token = csrf_token(logged_in, "/admin/quarantine")
    response = logged_in.post("/admin/quarantine/reprocess", data={"csrf_token": token, "event_id": event_id})
    assert "still unparseable" in logged_in.get(response.headers["Location"]).text
    # An empty body (Dolibarr could not encode the object) has nothing to parse again: no button,
    # blank as it is read (parse.is_empty_body), whitespace included.
    logged_in.post(f"/webhook/{WEBHOOKS_TEST_SECRET}", data=b"")
    logged_in.post(f"/webhook/{WEBHOOKS_TEST_SECRET}", data=b" \r\n")
    page = logged_in.get("/admin/quarantine").text
    assert page.count(">Reprocess</button>") == 1 and "Nothing to re-process" in page
    french = logged_in.get("/admin/quarantine", headers={"Accept-Language": "fr"}).text
    assert "Rien à retraiter" in french


def test_plugins_page(logged_in, app):
    post(logged_in)
    deliver_until_idle(app)
    page = logged_in.get("/admin/plugins").text
    assert "failer" in page and "recorder" in page and "enabled" in page
    assert "100 %" in page and "0 %" in page  # failer always fails, recorder never
    assert "is loaded and configured" in page  # what `check` says of each plugin
    assert "sleeper" in page and "SLEEPER_SECONDS" in page  # disabled, and why


def test_overview_counts_charts_and_heartbeat(logged_in, app):
    post(logged_in)
    page = logged_in.get("/admin/").text
    assert "No worker has been seen" in page and "<svg" in page and "BILL_PAYED" in page
    with running_worker(app, "dashboard-test"):
        wait_for(lambda: "dashboard-test" in logged_in.get("/admin/").text, 10)
        assert re.search(r'id="worker">.*?<p class="big">1</p>', logged_in.get("/admin/").text, re.S)
    assert "dashboard-test" not in logged_in.get("/admin/").text  # a worker that stops says so
    assert "sqlite" in page or "postgresql" in page


def test_store_queries_latency_and_outcomes(app):
    from dolibarr_webhooks.store import dashboard as queries

    client = app.test_client()
    post(client)
    deliver_until_idle(app)  # recorder and the built-in log deliver, failer dies
    store = app.extensions["dolibarr_webhooks"].store
    since = time.time() - 3600
    [latency] = queries.latency_per_hour(store, since)
    assert latency["count"] == 2 and 0 <= latency["mean"] <= latency["longest"] < 30
    outcomes = queries.attempt_outcomes(store, since)
    assert outcomes["recorder"] == outcomes["log"] == {"delivered": 1}
    assert outcomes["failer"] == {"failed": 1, "dead": 1}
    [per_hour] = queries.events_per_hour(store, since)
    assert per_hour["code"] == "BILL_PAYED" and per_hour["count"] == 1
    [group] = queries.failure_groups(store)
    assert (group["plugin"], group["status"], group["count"]) == ("failer", "dead", 1)
    assert group["last_error"] == "RuntimeError: failer fails attempt 2 on purpose"


def test_status_filter_pages_through_sparse_and_dense_states(app, monkeypatch):
    """Few deliveries in the state: their events by id. Many: the newest events in batches,
    a page ending where the scan stopped. Both list every event once, newest first."""
    from dolibarr_webhooks.store import dashboard as queries

    client = app.test_client()
    ids = [post(client, "COMPANY_CREATE", object_id=i) for i in range(7)]
    deliver_until_idle(app)  # failer: every delivery dead
    store = app.extensions["dolibarr_webhooks"].store
    newest_first = list(reversed(ids))

    def every_page(limit: int) -> list[list[str]]:
        pages, before = [], None
        while True:
            rows, before = queries.events_page(store, queries.EventFilter(status="dead", before=before), limit)
            pages.append([row["id"] for row in rows])
            if before is None:
                return pages

    assert every_page(3) == [newest_first[:3], newest_first[3:6], newest_first[6:]]
    monkeypatch.setattr(queries, "SPARSE", 2)
    monkeypatch.setattr(queries, "SCAN_BATCH", 2)
    monkeypatch.setattr(queries, "SCAN_BATCHES", 1)
    pages = every_page(3)
    assert [event_id for page in pages for event_id in page] == newest_first
    assert max(len(page) for page in pages) == 2  # each page stopped after one batch
    assert queries.events_page(store, queries.EventFilter(status="pending")) == ([], None)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_store_that_stops_answering_is_a_503_page_naming_it(make_app, handlers, database_url):
    """Every page answered 500, "the dashboard failed", with a traceback in the log, while the
    database refused connections: a 503 page that names the store and what it said. The page
    works again when the database does."""
    from postgres_helpers import database_name, refusing_connections

    app = make_app(handlers, ADMIN_PASSWORD=PASSWORD)
    client = app.test_client()
    login(client)
    with refusing_connections(database_name(database_url)):
        for path in ("/admin/", "/admin/events", "/admin/failures", "/admin/quarantine", "/admin/plugins",
                     "/admin/events/evt_x"):
            page = client.get(path)
            assert page.status_code == 503, (path, page.status_code)
            assert "The store is unavailable; try again in a moment." in page.text
            assert "is not currently accepting connections" in page.text
        replay = client.post("/admin/failures/replay", data={"csrf_token": csrf_token(client, "/admin/")})
        assert replay.status_code == 503, replay.text  # the form of a 503 page: its token still works
    assert wait_for(lambda: client.get("/admin/").status_code == 200, timeout=10, interval=0.2)
