"""What a long-running process does once it has loaded everything: a web process of
gunicorn (``web.gunicorn``'s worker classes) and the ``worker`` command."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Move every object the process holds once it is loaded (the app, its plugins,
    SQLAlchemy's tables, the imported modules: some 70,000 in a web process) to the garbage
    collector's permanent generation.

    Python's full collection walks every object that is tracked, and one comes every few
    thousand requests or deliveries, triggered by what the work in flight leaves behind.
    Under load, on 2 cores, each took 50 to 125 ms of a web process (its 16 threads held for
    as long): the worst answers at concurrency 16 (issue #15); in the worker process, the
    deliveries in flight wait as long. Frozen, those objects are never walked again, and are
    never freed, which objects living as long as the process never are anyway. The garbage
    is collected first, so none of it is kept for good."""
    gc.collect()
    gc.freeze()
