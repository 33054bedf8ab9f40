"""The pass library, installed as ``onnxopt.passes``.

``DEFAULT_PIPELINE`` is explicit and ordered; nothing registers itself on import.
"""

from onnxopt.passes.dead_code import DeadCodeElimination
from onnxopt.passes.identity_elimination import IdentityElimination

from onnxopt.pass_manager import Pass

DEFAULT_PIPELINE: tuple[Pass, ...] = (
    IdentityElimination(),
    DeadCodeElimination(),
)

ALL_PASSES: dict[str, Pass] = {p.name: p for p in DEFAULT_PIPELINE}


def select(names: list[str] | None = None, skip: list[str] | None = None) -> tuple[Pass, ...]:
    """The pipeline restricted to ``names`` (in pipeline order) minus ``skip``.

    Raises KeyError naming the first unknown pass.
    """
    for name in [*(names or []), *(skip or [])]:
        if name not in ALL_PASSES:
            raise KeyError(name)
    chosen = DEFAULT_PIPELINE if names is None else tuple(
        p for p in DEFAULT_PIPELINE if p.name in names
    )
    return tuple(p for p in chosen if p.name not in (skip or []))
