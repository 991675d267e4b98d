"""Which Python: the durable receiver under two interpreters, side by side.

    python bench/interpreters.py --python /usr/bin/python3.11 [--database sqlite|postgresql]
                                 [--concurrency 1,16] [--rounds 6] [--duration 3]

The receiver's answer is mostly the interpreter's work (issue #15: 60 % of a web process's CPU
in ``libpython`` under ``perf``), so how that interpreter was built shows in every figure.
CPython built with profile-guided and link-time optimisation, as Debian's and Ubuntu's
packages and the official Docker images are, runs a loop of Python in a quarter less time
than a build without (pyenv's default: ``--enable-shared`` and nothing else). Another version
(``--python ~/.pyenv/versions/3.13.0/bin/python3.13``) answers which of the Pythons a
deployer's system offers runs it best.

Two servers of the same core and the same packages run at once under ``serve``'s settings, each
on its own store: one under the running interpreter, one under ``--python`` (a virtual
environment of it, ``interpreter_venv``: for another build of this version it sees this one's
packages; for another version it gets the same versions from PyPI). ``wrk`` posts to one,
then the other, over interleaved rounds; read the medians of the per-round ratios. Each
interpreter is named with what a pure-Python loop of 10 million additions takes under it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

from _common import (GunicornSettings, Wrk, database, interleaved, interleaved_options, interleaved_report,
                     interpreter, interpreter_venv, product_server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", required=True,
                        help="the other interpreter (e.g. /usr/bin/python3.11, another build of this version; "
                             "or another version)")
    interleaved_options(parser, concurrency="1,16", rounds=6, duration=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dw-bench-python-") as tmp, contextlib.ExitStack() as stack:
        pythons = {"running": Path(sys.executable), "--python": interpreter_venv(Path(tmp), args.python)}
        names = {label: interpreter(python) for label, python in pythons.items()}
        servers = []
        for label, python in pythons.items():
            url = stack.enter_context(database(args.database))
            servers.append((label, stack.enter_context(product_server(GunicornSettings.serve(), database_url=url,
                                                                      python=python))))
        results = interleaved(servers, args.concurrency, args.rounds, args.duration, Wrk(Path(tmp)))
    print(f"# interpreters: the durable receiver ({args.database}) under serve's settings, "
          f"{args.rounds} rounds of {args.duration} s, interleaved; medians")
    for label, name in names.items():
        print(f"# {label}: {name}")
    print()
    print(interleaved_report(results, list(pythons), args.concurrency, "interpreter"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
