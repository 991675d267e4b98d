"""Both of our gunicorn worker classes, and the ``worker`` command, leave what their process
built at start-up out of the garbage collector's full collections
(``startup.freeze_startup_objects``): under load each full collection held a web process's
threads for 50 to 125 ms (issue #15). What was garbage at that moment is collected first, not
kept for good.

A real gunicorn runs a small application that says, from inside its web process, whether an
object made when it was imported is still walked by the collector; a real worker process
delivers to the test plugin, which notes how many objects its process froze.
"""

from __future__ import annotations

import pytest

from dolibarr_webhooks.testing import running_service, wait_for
from dolibarr_webhooks_testplugin import handler_config, handler_env, read_records
from production_helpers import plain_app_under_gunicorn

APP = '''
import gc
import json
import weakref


class Cycle:
    pass


# Garbage left by the import: only the collector can free a reference cycle.
_cycle = Cycle()
_cycle.itself = _cycle
garbage = weakref.ref(_cycle)
del _cycle

# A list is always tracked by the collector (a dict of strings is not).
built_at_import = ["the application's own objects"]


def app(environ, start_response):
    walked = any(candidate is built_at_import for candidate in gc.get_objects())
    body = json.dumps({"frozen": gc.get_freeze_count(), "walked": walked,
                       "garbage_kept": garbage() is not None}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''


@pytest.mark.parametrize("worker_class", ["ThreadWorker", "SyncWorker"])
def test_a_web_process_freezes_what_it_built_at_start_up(tmp_path, worker_class):
    with plain_app_under_gunicorn(tmp_path, APP, "-k", f"dolibarr_webhooks.web.gunicorn.{worker_class}") as served:
        answer = served.answer.json()
    assert answer["frozen"] > 1000, f"the process froze {answer['frozen']} objects\n{served.output}"
    assert not answer["walked"], "an object made when the application was imported is still walked by the collector"
    assert not answer["garbage_kept"], "garbage of the start-up was frozen instead of collected"


def test_the_worker_process_freezes_what_it_built_at_start_up(tmp_path):
    records = tmp_path / "recorder.jsonl"
    with running_service(env=handler_env(handler_config(tmp_path, recorder=True))) as service:
        assert service.post("COMPANY_CREATE").status_code == 200
        wait_for(lambda: read_records(records), timeout=15, message=service.logs)
        worker_pid = service.processes["worker"].pid
    [record] = read_records(records)
    assert record["pid"] == worker_pid, "the worker process delivered the event"
    assert record["frozen"] > 1000, f"the worker process froze {record['frozen']} objects"
