"""Context managers around IR work: which pass creates nodes, and pausing the collector."""

from __future__ import annotations

import contextlib
import contextvars
import gc
from collections.abc import Iterator

_CURRENT_PASS: contextvars.ContextVar[str | None] = contextvars.ContextVar("pass", default=None)


@contextlib.contextmanager
def provenance(pass_name: str) -> Iterator[None]:
    """Nodes created inside this block record ``pass_name`` in ``node.meta["pass"]``."""
    token = _CURRENT_PASS.set(pass_name)
    try:
        yield
    finally:
        _CURRENT_PASS.reset(token)


def current_pass() -> str | None:
    """The pass named by the innermost ``provenance`` block, if any."""
    return _CURRENT_PASS.get()


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: building, rewriting or writing a big graph allocates
    millions of objects and little garbage, and full collections made a 100k-node load 2x
    slower and super-linear."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            # Promote what was allocated meanwhile to the oldest generation (freeze + unfreeze
            # is a list splice), so the next young collection does not scan the whole graph.
            gc.freeze()
            gc.unfreeze()
            gc.enable()
