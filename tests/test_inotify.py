"""The folder watch that wakes idle SQLite workers (dolibarr_webhooks.pipeline.inotify)."""

from __future__ import annotations

import os
import sys

import pytest

from dolibarr_webhooks.pipeline.inotify import FolderWatch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


def test_only_the_named_files_count(tmp_path):
    watched, other = tmp_path / "webhooks.sqlite3.wake", tmp_path / "webhooks.sqlite3-wal"
    watch = FolderWatch.open(str(tmp_path), [watched.name])
    assert watch is not None
    try:
        assert watch.wait(0.05) is False
        other.write_bytes(b"frames")  # another file of the folder: not a wake-up
        assert watch.wait(0.2) is False
        os.utime(other)
        assert watch.wait(0.2) is False
        watched.touch()  # created
        assert watch.wait(0.2) is True
        assert watch.wait(0.05) is False, "a change is reported once"
        os.utime(watched)  # touched again, as Store._wake does
        os.utime(watched)
        assert watch.wait(0.2) is True
        assert watch.wait(0.05) is False, "changes queued together are reported together"
        with open(watched, "ab") as file:  # written: not watched (SQLite's WAL is written thousands of times a second)
            file.write(b"x")
        assert watch.wait(0.05) is False
    finally:
        watch.close()


def test_a_folder_that_cannot_be_watched_means_polling(tmp_path):
    assert FolderWatch.open(str(tmp_path / "missing"), ["x"]) is None
