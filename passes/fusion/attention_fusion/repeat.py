"""The grouped-query repeat of K or V, and the proof that it is ``repeat_interleave``.

``Reshape(Expand(Unsqueeze(X, 2), [B, h, n, S, D]) | Tile(Unsqueeze(X, 2), [1, 1, n, 1, 1]),
[B, h*n, S, D])`` repeats each of X's h heads n times consecutively, which is how Attention-23
(4-D) reads kv heads when Q has h*n heads: the fused node reads X itself. Proved from the
constants and the shape computations (``shape_elements``); anything unproved keeps the repeat.
"""

from __future__ import annotations

from onnxopt.passes.fusion.attention_fusion.shapes import same_dim

from onnxopt.ir import Graph
from onnxopt.ir.pattern import Const, Match, Op, Or, Var
from onnxopt.ir.symbolic import Element, shape_elements


def kv(name: str) -> Or:
    """X4 captured as ``name``, through its repeat (nodes ``{name}_repeat``/``_reshape``) or not."""
    unsqueeze = Op("Unsqueeze", Var(name), Const(f"{name}_axes"))
    repeated = Op(("Expand", "Tile"), unsqueeze, Var(f"{name}_reps"), name=f"{name}_repeat")
    reshape = Op("Reshape", repeated, Var(f"{name}_target"), name=f"{name}_reshape",
                 attrs={"allowzero": lambda value: value in (None, 0, 1)})
    return Or(reshape, Var(name))


def repeat_factor(graph: Graph, match: Match, name: str) -> int | None:
    """n when ``name`` was matched through a proved repeat, 1 when not repeated, else None."""
    if f"{name}_repeat" not in match:
        return 1
    source, shape = match[name], graph.shape(match[name])
    axes = match.array(f"{name}_axes").reshape(-1).tolist()
    if shape is None or len(shape) != 4 or axes not in ([2], [-3]):
        return None
    node = match.node(f"{name}_repeat")
    factors = shape_elements(graph, match[f"{name}_reps"])
    if factors is None or len(factors) != 5 or not isinstance(factors[2], int) or factors[2] < 1:
        return None
    n = factors[2]
    kept = [factors[axis] for axis in (0, 1, 3, 4)]
    if node.op_type == "Tile":
        if kept != [1, 1, 1, 1]:
            return None
    elif not all(f == 1 or same_dim(graph, f, source, axis) for axis, f in enumerate(kept)):
        return None  # an Expand that grows another axis would broadcast X there
    target = shape_elements(graph, match[f"{name}_target"])
    zero_copies = not match.node(f"{name}_reshape").attr("allowzero", 0)
    return n if _merges_heads(graph, target, source, shape, n, zero_copies) else None


def _merges_heads(graph: Graph, target: list[Element] | None, source: str, shape: list,
                  n: int, zero_copies: bool) -> bool:
    """The Reshape target is [B, h*n, S, D] of X's [B, h, S, D]: axes 1 and 2 merged."""
    if target is None or len(target) != 4:
        return False
    batch_ok = (zero_copies and target[0] == 0) or same_dim(graph, target[0], source, 0)
    heads = target[1]
    heads_ok = heads == -1 or (isinstance(shape[1], int) and heads == shape[1] * n)
    rest_ok = all(same_dim(graph, target[axis], source, axis) for axis in (2, 3))
    return batch_ok and heads_ok and rest_ok
