"""gunicorn configuration used by ``bench/profile_ingest.py`` only: each worker runs under
cProfile (wall-clock time, so waiting on fsync or on the SQLite write lock shows) and
writes its statistics to ``$BENCH_PROFILE_DIR/worker-<pid>.prof`` when it exits."""

import cProfile
import os


def post_fork(server, worker):
    worker.bench_profile = cProfile.Profile()
    worker.bench_profile.enable()


def worker_exit(server, worker):
    profile = getattr(worker, "bench_profile", None)
    if profile is not None:
        profile.disable()
        profile.dump_stats(os.path.join(os.environ["BENCH_PROFILE_DIR"], f"worker-{os.getpid()}.prof"))
