"""Both of our gunicorn worker classes read gunicorn's settings once per process
(``web.gunicorn.SettledConfig``) instead of at every request: gunicorn's parser, header policy
and hooks looked up about thirty settings a request, each through ``Config.__getattr__``: 18 to
29 us of a request (issue #15). What must not change: every setting reads as
gunicorn's own configuration says, and one changed with ``set`` reads as changed.

A real gunicorn runs a small application that counts, from inside its web process, the
lookups that reached gunicorn's ``Config``; gunicorn's own gthread worker is the control.
"""

from __future__ import annotations

import pytest
import requests
from gunicorn.config import Config

from dolibarr_webhooks.web.gunicorn import SettledConfig
from production_helpers import plain_app_under_gunicorn

APP = '''
import json

import gunicorn.config

lookups = 0
_lookup = gunicorn.config.Config.__getattr__


def _counted(self, name):
    global lookups
    lookups += 1
    return _lookup(self, name)


gunicorn.config.Config.__getattr__ = _counted


def app(environ, start_response):
    body = json.dumps({"lookups": lookups}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''


def _lookups_over_requests(url: str, requests_made: int) -> int:
    """Lookups of gunicorn's settings while ``requests_made`` requests of one kept-alive
    connection were read and answered, after a first one."""
    with requests.Session() as session:
        def lookups() -> int:
            return session.post(url, data=b'{"triggercode": "BILL_VALIDATE"}', timeout=10).json()["lookups"]

        first = lookups()
        for _ in range(requests_made):
            last = lookups()
    return last - first


@pytest.mark.parametrize("worker_class", ["dolibarr_webhooks.web.gunicorn.ThreadWorker",
                                          "dolibarr_webhooks.web.gunicorn.SyncWorker"])
def test_a_web_process_reads_gunicorns_settings_once(tmp_path, worker_class):
    with plain_app_under_gunicorn(tmp_path, APP, "-k", worker_class) as served:
        assert _lookups_over_requests(served.url, 10) == 0


def test_gunicorns_own_worker_reads_them_at_every_request(tmp_path):
    # The control: the count above sees what it counts.
    with plain_app_under_gunicorn(tmp_path, APP, "-k", "gthread") as served:
        assert _lookups_over_requests(served.url, 10) >= 10


def test_settled_settings_read_as_gunicorns_and_follow_set():
    cfg = Config()
    cfg.set("limit_request_line", 1234)
    settled = SettledConfig(cfg)
    for name in cfg.settings:
        assert getattr(settled, name) == getattr(cfg, name), name
    assert not settled.is_ssl and settled.forwarded_allow_networks() == cfg.forwarded_allow_networks()

    settled.set("limit_request_line", 99)
    settled.set("certfile", __file__)
    assert (settled.limit_request_line, cfg.limit_request_line) == (99, 99)
    assert settled.certfile == __file__
    assert settled.is_ssl, "a property reads the setting changed through set"
