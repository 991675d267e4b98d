"""A local HTTP server that answers like Dolibarr 22.0.4's REST API for the calls the plugin
makes, built from answers recorded against a real Dolibarr (``data/NN_*.txt``: the request,
then ``----``, then the status line, headers and body as the server sent them).

Its bodies are the recorded ones, with the ids, refs and statuses of its own state put in;
its errors are the recorded error answers (401, 403, 404, 400, 500, 501, 503). What it keeps
as Dolibarr does: ``createfromproposal`` makes a new draft order at every call and links it
to the proposal (``linkedObjectsIds.commande``); agenda events are stored with ``elementtype``
``facture`` turned into ``invoice`` and ``fk_element`` read back as ``elementid``, and listed
through ``sqlfilters`` on database columns (an unknown column answers 503).

``GET /users/info`` was not recorded: its answer here is the shape of Dolibarr's user object,
cut down to the fields the plugin reads.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from dolibarr_webhooks.testing import local_http_server

DATA = Path(__file__).parent / "data"
API_KEY = "0123456789abcdef0123456789abcdef01234567"
API_USER = 7  # the plugin's own Dolibarr user; the recorded objects were made by user 1
PREFIX = "/api/index.php/"
AGENDA_COLUMNS = {"code": "code", "elementtype": "elementtype", "fk_element": "elementid", "fk_soc": "socid",
                  "label": "label", "type_code": "type_code"}  # column -> API property
AGENDA_TYPES = {"AC_OTH_AUTO", "AC_OTH", "AC_RDV", "AC_TEL", "AC_EMAIL"}
STORED_ELEMENT_TYPES = {"facture": "invoice", "commande": "order", "contrat": "contract"}


@dataclass(frozen=True)
class Recorded:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def recorded(number: str) -> Recorded:
    """The answer of recorded call ``number`` (``"50"``)."""
    (path,) = DATA.glob(f"{number}_*.txt")
    _request, _, response = path.read_text(encoding="utf-8").partition("\n----\n")
    head, _, body = response.partition("\n\n")
    status_line, *header_lines = head.splitlines()
    _, status, reason = status_line.split(" ", 2)
    headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
    return Recorded(int(status), reason, headers, body.rstrip("\n").encode("utf-8"))


# The recorded error answer for each status the fake gives.
ERRORS = {400: "35", 401: "50", 403: "77", 404: "52", 500: "55", 501: "58", 503: "36"}
# 429 was not recorded (Dolibarr has no rate limit of its own; a proxy in front may): Restler's shape.
TOO_MANY = Recorded(429, "Too Many Requests", {"Content-Type": "application/json; charset=utf-8"},
                    b'{"error": {"code": 429, "message": "Too Many Requests: Rate limit exceeded"}}')


@dataclass
class Call:
    method: str
    path: str  # without the /api/index.php/ prefix and the query
    query: dict[str, str]
    body: Any
    key: str | None


@dataclass
class FakeDolibarr:
    """State and knobs of the fake; ``url`` is its REST API root."""

    key: str = API_KEY
    user_id: int = API_USER
    proposals: dict[int, dict[str, Any]] = field(default_factory=dict)
    orders: dict[int, dict[str, Any]] = field(default_factory=dict)
    agenda: dict[int, dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    # "METHOD path-regex" -> [(status, headers), ...] answered first, one per matching call
    faults: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    # createfromproposal: this many times, create the order and then answer 500
    fail_after_create: int = 0
    agenda_module: bool = True
    forbidden: set[str] = field(default_factory=set)  # "METHOD path-regex" the user has no right for
    # "METHOD path" -> (status, JSON body) answered once instead of Dolibarr's: what a proxy or
    # another version might answer
    odd: dict[str, tuple[int, Any]] = field(default_factory=dict)
    server: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    _links: int = 0
    _next_agenda: int = 100

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/index.php"

    @property
    def root(self) -> str:
        """What the core's DOLIBARR_URL would be (the API is under /api/index.php)."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fault(self, route: str, status: int, times: int = 1, headers: dict[str, str] | None = None) -> None:
        self.faults.setdefault(route, []).extend([(status, headers or {})] * times)

    def made(self, method: str, pattern: str = "") -> list[Call]:
        return [c for c in self.calls if c.method == method and re.fullmatch(pattern or ".*", c.path)]

    # -- objects, from the recorded bodies ------------------------------------------------
    def add_proposal(self, proposal_id: int, status: int = 2, socid: int = 42, ref: str | None = None) -> None:
        proposal = copy.deepcopy(recorded("10").json())
        proposal.update(id=str(proposal_id), ref=ref or f"PR2611-{proposal_id:04d}", status=status, statut=status,
                        socid=str(socid))
        self.proposals[proposal_id] = proposal

    def add_order(self, order_id: int, status: str = "1", socid: int = 42, ref: str | None = None) -> None:
        order = copy.deepcopy(recorded("16" if status != "0" else "14").json())
        order.update(id=str(order_id), ref=ref or (f"CO2611-{order_id:04d}" if status != "0" else f"(PROV{order_id})"),
                     status=status, statut=status, socid=str(socid), linkedObjectsIds=[])
        self.orders[order_id] = order

    def order_ids_of(self, proposal_id: int) -> list[str]:
        links = self.proposals[proposal_id]["linkedObjectsIds"]
        return sorted((links or {}).get("commande", {}).values()) if isinstance(links, dict) else []

    def _link(self, obj: dict[str, Any], element: str, target: int) -> None:
        self._links += 1
        if not isinstance(obj["linkedObjectsIds"], dict):
            obj["linkedObjectsIds"] = {}  # [] when there is no link, as Dolibarr answers
        obj["linkedObjectsIds"].setdefault(element, {})[str(self._links)] = str(target)

    # -- the API --------------------------------------------------------------------------
    def answer(self, call: Call) -> tuple[int, Any, dict[str, str]]:
        """(status, JSON body or Recorded, extra headers)."""
        if not call.key:
            return 401, recorded("51"), {}
        if call.key != self.key:
            return 401, recorded("50"), {}
        route = f"{call.method} {call.path}"
        if route in self.odd:
            status, body = self.odd.pop(route)
            return status, body, {}
        for pattern, queued in self.faults.items():
            if queued and re.fullmatch(pattern, route):
                status, headers = queued.pop(0)
                return status, recorded(ERRORS[status]) if status != 429 else TOO_MANY, headers
        if any(re.fullmatch(pattern, route) for pattern in self.forbidden):
            return 403, recorded("77"), {}
        if call.path.startswith("agendaevents") and not self.agenda_module:
            return 403, recorded("61"), {}
        for pattern, method in ROUTES:
            match = re.fullmatch(pattern, route)
            if match:
                return method(self, call, *match.groups())
        return 501, recorded("58"), {}

    def users_info(self, call: Call) -> tuple[int, Any, dict[str, str]]:
        return 200, {"id": str(self.user_id), "login": "webhooks", "admin": "0", "statut": "1", "entity": "1",
                     "lastname": "Webhooks", "firstname": "", "api_key": None}, {}

    def get_proposal(self, call: Call, proposal_id: str) -> tuple[int, Any, dict[str, str]]:
        proposal = self.proposals.get(int(proposal_id))
        return (200, proposal, {}) if proposal else (404, recorded("57"), {})

    def create_order(self, call: Call, proposal_id: str) -> tuple[int, Any, dict[str, str]]:
        proposal = self.proposals.get(int(proposal_id))
        if proposal is None:
            return 404, recorded("57"), {}
        order_id = max([*self.orders, 0]) + 1  # no status check: Dolibarr makes one from a draft too (59)
        self.add_order(order_id, status="0", socid=int(proposal["socid"]))
        self._link(self.orders[order_id], "propal", int(proposal_id))
        self._link(proposal, "commande", order_id)
        if self.fail_after_create > 0:  # saved, but the answer is lost
            self.fail_after_create -= 1
            return 500, recorded("55"), {}
        created = copy.deepcopy(recorded("59").json())
        created.update(id=order_id, ref=f"(PROV{order_id})", origin_id=proposal_id,
                       linkedObjectsIds=self.orders[order_id]["linkedObjectsIds"])
        return 200, created, {}

    def get_order(self, call: Call, order_id: str) -> tuple[int, Any, dict[str, str]]:
        order = self.orders.get(int(order_id))
        if order is None:
            missing = recorded("52")
            return 404, Recorded(404, missing.reason, missing.headers,
                                 missing.body.replace(b"Invoice not found", b"Order not found")), {}
        return 200, order, {}

    def builddoc(self, call: Call) -> tuple[int, Any, dict[str, str]]:
        body = call.body if isinstance(call.body, dict) else {}
        if not body.get("original_file"):
            return 400, recorded("43"), {}
        ref = Path(body["original_file"]).stem
        objects = {"order": self.orders, "commande": self.orders, "propal": self.proposals,
                   "proposal": self.proposals}.get(body.get("modulepart"), {})
        if not any(obj["ref"] == ref for obj in objects.values()):
            return 404, recorded("42"), {}
        built = recorded("40").json()
        built.update(filename=f"{ref}.pdf")
        return 200, built, {}

    def create_event(self, call: Call) -> tuple[int, Any, dict[str, str]]:
        body = call.body if isinstance(call.body, dict) else {}
        if not body.get("type_code"):
            return 400, recorded("53"), {}
        if not body.get("userownerid"):
            return 400, recorded("54"), {}
        if body["type_code"] not in AGENDA_TYPES:
            return 500, recorded("55"), {}
        self._next_agenda += 1
        event = copy.deepcopy(recorded("31").json())
        elementtype = body.get("elementtype")
        event.update(id=str(self._next_agenda), ref=str(self._next_agenda), type_code=body["type_code"],
                     code=body.get("code") or body["type_code"], label=body.get("label"),
                     note_private=body.get("note_private", body.get("note")), datep=body.get("datep"),
                     userownerid=str(body["userownerid"]), authorid=str(self.user_id),
                     socid=str(body["socid"]) if body.get("socid") is not None else None,
                     elementtype=STORED_ELEMENT_TYPES.get(elementtype, elementtype),
                     elementid=str(body["fk_element"]) if body.get("fk_element") is not None else None)
        self.agenda[self._next_agenda] = event
        return 200, self._next_agenda, {}

    def list_events(self, call: Call) -> tuple[int, Any, dict[str, str]]:
        events = list(self.agenda.values())
        text = call.query.get("sqlfilters", "")
        if text:
            terms = re.split(r"\s*and\s*", text.strip())
            for term in terms:
                match = re.fullmatch(r"\(t\.(\w+):(=|like):('?)([^']*)\3\)", term)
                if not match:
                    return 400, recorded("35"), {}
                column, op, _, value = match.groups()
                if column not in AGENDA_COLUMNS:
                    return 503, recorded("36"), {}
                prop = AGENDA_COLUMNS[column]
                if op == "=":
                    events = [e for e in events if str(e.get(prop)) == value]
                else:
                    pattern = re.escape(value).replace("%", ".*")
                    events = [e for e in events if re.fullmatch(pattern, str(e.get(prop) or ""))]
        events.sort(key=lambda e: int(e["id"]), reverse=call.query.get("sortorder") == "DESC")
        events = events[:int(call.query.get("limit") or 100)]
        if call.query.get("properties"):
            wanted = call.query["properties"].split(",")
            events = [{k: v for k, v in e.items() if k in wanted} for e in events]
        return 200, events, {}

    def get_event(self, call: Call, event_id: str) -> tuple[int, Any, dict[str, str]]:
        event = self.agenda.get(int(event_id))
        return (200, event, {}) if event else (404, recorded("52"), {})


ROUTES = [
    (r"GET users/info", FakeDolibarr.users_info),
    (r"GET proposals/(\d+)", FakeDolibarr.get_proposal),
    (r"POST orders/createfromproposal/(\d+)", FakeDolibarr.create_order),
    (r"GET orders/(\d+)", FakeDolibarr.get_order),
    (r"PUT documents/builddoc", FakeDolibarr.builddoc),
    (r"POST agendaevents", FakeDolibarr.create_event),
    (r"GET agendaevents", FakeDolibarr.list_events),
    (r"GET agendaevents/(\d+)", FakeDolibarr.get_event),
]


@contextlib.contextmanager
def serve(state: FakeDolibarr) -> Iterator[FakeDolibarr]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def handle_any(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            path = unquote(parts.path)
            path = path[len(PREFIX):] if path.startswith(PREFIX) else path
            call = Call(self.command, path.strip("/"), {k: v[0] for k, v in parse_qs(parts.query).items()}, body,
                        self.headers.get("DOLAPIKEY"))
            with state.lock:
                state.calls.append(call)
                status, answer, headers = state.answer(call)
            if isinstance(answer, Recorded):
                payload, reason = answer.body, answer.reason
                headers = {"Content-Type": answer.headers.get("Content-Type", "application/json"), **headers}
            else:
                payload, reason = json.dumps(answer, indent=4).encode(), None
                headers = {"Content-Type": "application/json; charset=utf-8", **headers}
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(status, reason)
                self.send_header("X-Powered-By", "Luracast Restler v3.1.0")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = handle_any

    with local_http_server(Handler) as server:
        state.server = server
        yield state


@pytest.fixture
def dolibarr() -> Iterator[FakeDolibarr]:
    """The fake Dolibarr, with signed proposal 88 and validated order 21 of third party 42 (the
    objects of the core's sample bodies for PROPAL_CLOSE_SIGNED and ORDER_VALIDATE)."""
    state = FakeDolibarr()
    state.add_proposal(88, status=2, ref="PR2611-0088")
    state.add_order(21, status="1", ref="CO2611-0021")
    with serve(state) as running:
        yield running


@pytest.fixture
def plugin_settings(dolibarr):
    """``plugin_settings(**config)``: the plugin's settings for the fake, as read_settings makes them."""
    import dolibarr_webhooks_dolibarr as plugin

    def make(**config: Any):
        return plugin.read_settings(config={"api_key": dolibarr.key, "settle_delay": 0, "timeout": 5, **config})

    return make


@pytest.fixture
def event_for(dolibarr, dolibarr_event):
    """``event_for(code, **object_fields)``: a sample event whose source's Dolibarr is the fake."""

    def make(code: str, **fields: Any):
        return dolibarr_event(code, dolibarr_url=dolibarr.root, **fields)

    return make


@pytest.fixture
def captured_event(dolibarr):
    """``captured_event("ACTION_CREATE-automatic", trigger=None, **object_changes)``: an event from a
    body a real Dolibarr 22.0.4 posted (``data/<name>.captured.json``; ``trigger`` replaces its
    code), its source's Dolibarr the fake."""
    from dolibarr_webhooks.pipeline.parse import event_from_body

    def make(name: str, trigger: str | None = None, **changes: Any):
        body = json.loads((DATA / f"{name}.captured.json").read_text(encoding="utf-8"))
        body["object"].update(changes)
        body["triggercode"] = trigger or body["triggercode"]
        return event_from_body(json.dumps(body).encode(), dolibarr_url=dolibarr.root)

    return make


@pytest.fixture(autouse=True)
def plugin_log(caplog):
    """The plugin's lines at INFO, in ``caplog``. Its handler is put on the plugin's logger itself:
    once a test in this process has built an app, the core's ``dolibarr_webhooks`` logger stops
    propagating to the root logger, where caplog listens."""
    logger = logging.getLogger("dolibarr_webhooks.plugin.dolibarr")
    caplog.set_level(logging.INFO, logger=logger.name)
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)
