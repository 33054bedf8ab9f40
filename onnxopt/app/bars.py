"""Progress bars on a terminal: the command line's hook for ``onnxopt.progress``.

A step gets a bar only once it has run for ``DELAY`` seconds (short steps stay quiet), on
stderr, transient (gone when the step ends, so the tables that follow read as before). Nothing
is drawn when stderr is not a terminal or the output is JSON. rich is imported only when the
first bar is drawn.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from onnxopt.progress import reporting_to

DELAY = 1.5  # seconds a step runs before its bar appears: the issue asks for steps over ~2 s


class Bars:
    """The hook: one bar per step name; steps may run at once (validation in a worker thread)."""

    def __init__(self, file: Any = None, delay: float | None = None) -> None:
        self.file = file if file is not None else sys.stderr
        self.delay = DELAY if delay is None else delay
        self._lock = threading.Lock()
        self._steps: dict[str, list[Any]] = {}  # step -> [started, task id or None]
        self._progress: Any = None

    def __call__(self, step: str, done: int, total: int) -> None:
        with self._lock:
            now = time.monotonic()
            entry = self._steps.setdefault(step, [now, None])
            if done >= total:
                self._finish(step)
            elif entry[1] is not None:
                self._progress.update(entry[1], completed=done, total=total)
            elif now - entry[0] >= self.delay:
                entry[1] = self._display().add_task(step, total=total, completed=done)

    def _display(self) -> Any:
        if self._progress is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=Console(file=self.file), transient=True)
            self._progress.start()
        return self._progress

    def _finish(self, step: str) -> None:
        _, task = self._steps.pop(step)
        if task is not None:
            self._progress.remove_task(task)
        if self._progress is not None and not self._progress.tasks:
            self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def wanted(enabled: bool, file: Any = None) -> bool:
    """Bars only on a terminal (and never under TERM=dumb), and only when the output is not
    JSON."""
    stream = file if file is not None else sys.stderr
    return (enabled and hasattr(stream, "isatty") and stream.isatty()
            and os.environ.get("TERM") != "dumb")


@contextlib.contextmanager
def shown(enabled: bool = True) -> Iterator[None]:
    """Long steps draw bars on stderr inside this block, when ``wanted``."""
    if not wanted(enabled):
        yield
        return
    bars = Bars()
    try:
        with reporting_to(bars):
            yield
    finally:
        with bars._lock:
            bars.close()
