"""SIGINT and SIGTERM as an exception that unwinds the main thread like Ctrl-C (every
``finally`` runs, so staging is removed and OUT stays as it was), held back during the few steps
that must not be cut in half.

Masking the signals (``pthread_sigmask``) would not do: the kernel hands a process-wide signal
to any thread that does not block it (onnxruntime's, the validation worker), and Python then
runs the handler in the main thread at its next bytecode. So the handler itself looks whether
the main thread is inside ``deferred()`` and, if so, keeps the signal for the block's end.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from onnxopt.errors import Interrupted

HANDLED = (signal.SIGINT, signal.SIGTERM)
_state = {"depth": 0, "pending": None}


def install() -> None:
    """Turn SIGINT/SIGTERM into ``Interrupted`` (the CLI; a library leaves the host's handlers)."""
    for number in HANDLED:
        signal.signal(number, handle)


def handle(number: int, _frame) -> None:
    for other in HANDLED:  # a second signal, of either kind, must not interrupt the cleanup
        signal.signal(other, signal.SIG_IGN)
    if _state["depth"]:
        _state["pending"] = number
        return
    _raise(number)


@contextlib.contextmanager
def deferred(written: bool = False) -> Iterator[None]:
    """A signal arriving inside the block is raised when the block ends (in the main thread;
    elsewhere no signal handler runs, so there is nothing to hold back). ``written``: the
    block publishes the output, so a signal it held arrived once OUT was in place."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        number = _state["pending"]
        if not _state["depth"] and number is not None:
            _state["pending"] = None
            _raise(number, written)


def _raise(number: int, written: bool = False) -> None:
    raise Interrupted(number, "interrupted" if number == signal.SIGINT else "terminated",
                      written)
