"""Which web process takes a new connection: the one with fewest, not the first awake.

Every process of gunicorn's threaded worker waits on the same listening socket, and the
kernel wakes them all: the first to run accepts. Under a burst of connections that is
the process already running, again and again. wrk's 16 kept-alive connections went
[16], [13, 2, 1], [9, 5, 2] and [7, 5, 4] to four processes in four runs, and the process
holding 13 served them with one GIL while the others idled: 560 to 1,323 requests a
second, p99 25 to 539 ms (bench/HISTORY.rst, issue #15). gunicorn's own issue #3433.

Here each process publishes its open connections in a table shared by the processes of
one gunicorn master (an anonymous shared mapping, made when the master imports this
module, before it forks), with whether it is accepting. A process about to accept
steps back for ``STEP_BACK`` when another accepting process holds at least ``MARGIN``
fewer connections: that one was woken for the same connection and takes it. It steps
back for ``MAX_STEP_BACK`` at most while the others accept nothing, so a process that
stopped without saying so, or cannot run, costs a new connection that long at most.
"""

from __future__ import annotations

import mmap
import os

# Processes of one master at once: serve and contrib run 8 at most. With more, two may share
# a slot, and misjudge: for MAX_STEP_BACK at most.
SLOTS = 32
MARGIN = 2
STEP_BACK = 0.001
MAX_STEP_BACK = 0.005

_PID, _CONNECTIONS, _ACCEPTING = range(3)
_FIELDS = 3

# Made in the master when gunicorn loads the worker class, shared by the workers it forks;
# a process that imports this module after the fork has a table of its own, and never
# steps back.
_table = mmap.mmap(-1, SLOTS * _FIELDS * 8)


class ConnectionShare:
    """One process's slot in the master's table, and its decision to step back."""

    def __init__(self, age: int) -> None:
        # gunicorn numbers its workers in the order it starts them: the processes alive at
        # once have neighbouring numbers, so their slots differ.
        self.slot = age % SLOTS
        self.values = memoryview(_table).cast("q")
        self.pid = os.getpid()
        base = self.slot * _FIELDS
        self.values[base + _PID] = self.pid
        self.values[base + _CONNECTIONS] = 0
        self.values[base + _ACCEPTING] = 0
        self._since: float | None = None  # stepping back since
        self._others_then = 0  # the others' connections then

    def publish(self, connections: int, accepting: bool | None = None) -> None:
        base = self.slot * _FIELDS
        self.values[base + _CONNECTIONS] = connections
        if accepting is not None:
            self.values[base + _ACCEPTING] = int(accepting)

    def step_back(self, connections: int, now: float) -> bool:
        """True when another accepting process holds ``MARGIN`` fewer connections than
        ``connections``, unless this one has stepped back for ``MAX_STEP_BACK`` while the
        others accepted nothing."""
        values, fewer = self.values, connections - MARGIN
        others, reason = 0, False
        for base in range(0, SLOTS * _FIELDS, _FIELDS):
            pid = values[base + _PID]
            if pid and pid != self.pid and values[base + _ACCEPTING]:
                others += values[base + _CONNECTIONS]
                if not reason and values[base + _CONNECTIONS] <= fewer and alive(pid):
                    reason = True
        if not reason:
            self._since = None
            return False
        # A burst leaves connections waiting for longer than the bound: while the others
        # keep accepting, the bound starts again.
        if self._since is None or others > self._others_then:
            self._since = now
        elif now - self._since >= MAX_STEP_BACK:
            self._since = None
            return False
        self._others_then = others
        return True

    def taken_elsewhere(self) -> None:
        """Nothing is waiting to be accepted (another process took what this one stepped back
        from): the next step back starts its bound anew."""
        self._since = None

    def leave(self) -> None:
        base = self.slot * _FIELDS
        if self.values[base + _PID] == self.pid:
            self.values[base + _ACCEPTING] = 0
            self.values[base + _CONNECTIONS] = 0
            self.values[base + _PID] = 0


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie not yet reaped does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
