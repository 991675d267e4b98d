#!/bin/sh
# Every benchmark with modest durations: about 8 minutes on 2 cores, each script under 3
# (BENCH_EXPERIMENTS=1 adds about 14).
# Needs wrk (apt-get install -y wrk) and, for the PostgreSQL points, a PostgreSQL on
# 127.0.0.1:5432 where user postgres may create databases (DOLIBARR_WEBHOOKS_BENCH_POSTGRES
# gives another admin URL). BENCH_EXPERIMENTS=1 also measures this checkout against an older
# core revision and other settings.
set -eu
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}

echo "== ingest: durable receiver against a no-op Flask endpoint, the least durable one and the Node receiver"
"$PYTHON" ingest.py --database both --concurrency 1,16,64
echo
echo "== latency: POST to handler, idle worker"
"$PYTHON" latency.py --database both --events 200
echo
echo "== slow plugin: acknowledgement latency with a handler that sleeps 10 s"
"$PYTHON" slow_plugin.py

echo "== write amplification: the log the store writes per event"
"$PYTHON" write_amplification.py
echo
echo "== drain: a backlog delivered by one worker process"
"$PYTHON" drain.py
echo
echo "== serve: the command as it ships, its delivery threads delivering"
"$PYTHON" serve.py

if [ "${BENCH_EXPERIMENTS:-0}" = 1 ]; then
    # Each about 2 to 3 minutes. The baseline revision is the core before the ingest fix.
    echo
    echo "== experiments: CPU per request, one process (no HTTP server, no load generator)"
    "$PYTHON" cpu_per_event.py --baseline "${BENCH_BASELINE:-adc5c9a}"
    echo
    echo "== experiments: what one answer is made of, phase by phase (one process, one request at a time)"
    "$PYTHON" phases.py
    echo
    echo "== experiments: this checkout against the core at ${BENCH_BASELINE:-adc5c9a}"
    "$PYTHON" ingest.py --baseline "${BENCH_BASELINE:-adc5c9a}"
    echo
    echo "== experiments: production gunicorn settings (flock queue and worker NORMAL are built in)"
    "$PYTHON" ingest.py --production --with-worker --concurrency 1,16
    echo
    echo "== experiments: SQLite synchronous NORMAL (against FULL, shipped, in the first run)"
    "$PYTHON" ingest.py --concurrency 1,16 --setting SQLITE_SYNCHRONOUS=normal
    echo
    echo "== experiments: the receiver under the distribution's Python (another build of this version)"
    "$PYTHON" interpreters.py --python "${BENCH_OTHER_PYTHON:-/usr/bin/python3}" --rounds 4 \
        || echo "(skipped: ${BENCH_OTHER_PYTHON:-/usr/bin/python3} is not another build of this Python)"
fi
