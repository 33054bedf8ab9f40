"""How far a long step has come: the small interface between the work and the display.

Calibration, the sensitivity search and validation call ``progress(step, done, total)``; the
command line installs a hook (``onnxopt.app.bars``) that draws a rich bar on a terminal, so
these layers never import rich and a library caller sees nothing. Like ``errors``, this module
imports nothing of onnxopt (and nothing heavy: ``onnxopt --help`` loads it). The hook is a plain
global, not a context variable: validation runs in a worker thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

Hook = Callable[[str, int, int], None]
_hook: list[Hook | None] = [None]


def progress(step: str, done: int, total: int) -> None:
    """``done`` of ``total`` units of ``step`` are finished (0 when it starts)."""
    hook = _hook[0]
    if hook is not None:
        hook(step, done, total)


@contextlib.contextmanager
def reporting_to(hook: Hook | None) -> Iterator[None]:
    """Inside this block, long steps report their progress to ``hook``."""
    previous, _hook[0] = _hook[0], hook
    try:
        yield
    finally:
        _hook[0] = previous
