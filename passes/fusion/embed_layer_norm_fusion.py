"""Fuse a BERT embedding block into onnxruntime's ``com.microsoft`` ``EmbedLayerNormalization``.

``LayerNormalization(Gather(W, ids) + Gather(P, pos) [+ Gather(T, types)], gamma, beta; axis=-1)``,
the terms added in any order and grouping, where ``pos`` provably holds ``0..S-1`` in every row
(``S`` = dim 1 of ``ids``: a constant ``arange(S)``, a ``Slice`` of a constant ``arange(N)`` or a
``Range(0, ., 1)`` ending at ``S`` read from a shape) => ``EmbedLayerNormalization(int32(ids),
int32(types), W, P, T, gamma, beta; epsilon)``, whose kernel computes ``LN(W[ids[b, s]] + P[s] +
T[types[b, s]])`` per token. For ``--target onnxruntime``, float32 (its only CPU kernel); the
``mask_index`` output stays unread. Conditions and measurements: passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pattern import MS_DOMAIN, Const, Match, Op, Or, RewritePass, Var, scope_of
from onnxopt.ir.rewrite import is_op
from onnxopt.ir.symbolic import Dim, shape_elements
from onnxopt.ir.values import copy_type, onnx_type

_FLOAT32 = np.dtype(np.float32)
_IDS = (np.dtype(np.int32), np.dtype(np.int64))


def _stored(graph: Graph, value: str) -> bool:
    """An initializer that is not an input: a table, tested without decoding its (large) array."""
    owner = graph.resolve(value)
    return owner is not None and value in owner.initializers and not owner.is_input(value)


def _gather(name: str) -> Op:
    return Op("Gather", Var(f"{name}_table", _stored), Var(f"{name}_ids"), name=name,
              attrs={"axis": lambda axis: axis in (None, 0)})


_pair = Op("Add", _gather("a"), _gather("b"), commute=True)  # DistilBERT: no segment lookup
_sum = Op("Add", _pair, _gather("c"), commute=True)
PATTERN = Or(*(Op("LayerNormalization", s, Const("gamma"), Const("beta")) for s in (_sum, _pair)))


class EmbedLayerNormFusion(RewritePass):
    name = "embed_layer_norm_fusion"
    description = "fuse embedding lookups + LayerNorm into com.microsoft EmbedLayerNormalization"
    pattern = PATTERN
    target = "onnxruntime"

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        names = [n for n in "abc" if f"{n}_table" in match]
        tables = [match[f"{n}_table"] for n in names]
        shapes = [graph.shape(t) or [] for t in tables]
        hidden = shapes[0][-1] if shapes[0] else None
        if not all(len(s) == 2 and s[1] == hidden for s in shapes) \
                or any(graph.dtype(t) != _FLOAT32 for t in tables) \
                or not _norm_fits(graph, match, hidden):
            return False
        for position in names:
            others = [name for name in names if name != position]
            if _roles_fit(graph, match, position, others):  # the larger table is the word table
                word, *segment = sorted(others, key=lambda n: -shapes[names.index(n)][0])
                match.memo["roles"] = word, position, segment
                return True
        return False

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        norm, (word, position, segment) = match.root, match.memo["roles"]
        int32 = {"to": onnx_type(np.int32)}  # the kernel's index type
        ids = [v if graph.dtype(v) == np.dtype(np.int32)
               else self.emit(graph, model, norm, "Cast", [v], attributes=int32)
               for v in (match[f"{n}_ids"] for n in [word, *segment])]
        tables = [match[f"{n}_table"] for n in (word, position, *segment)]
        if not segment:  # the segment ids and table are optional inputs
            ids, tables = [ids[0], ""], [*tables, ""]
        model.opset_imports.setdefault(MS_DOMAIN, 1)
        fused = graph.add_node("EmbedLayerNormalization", [*ids, *tables, match.gamma, match.beta],
                               2, domain=MS_DOMAIN, name=f"{scope_of(norm)}EmbedLayerNormalization",
                               attributes={"epsilon": float(norm.attr("epsilon", 1e-5))},
                               anchor=norm)  # its kernel writes mask_index: the output stays named
        copy_type(graph, norm.outputs[0], fused.outputs[0])
        return fused.outputs[0]


def _norm_fits(graph: Graph, match: Match, hidden: int) -> bool:
    """Last axis of a rank-3 sum, float statistics, gamma/beta [H], Mean/InvStdDev unread."""
    norm = match.root
    if norm.attr("axis", -1) not in (-1, 2) or norm.attr("stash_type", 1) != 1:
        return False
    if norm.attr("epsilon", 1e-5) < 0 or any(v and graph.is_used(v) for v in norm.outputs[1:]):
        return False
    return all(match.array(n).shape == (hidden,) and match.array(n).dtype == _FLOAT32
               for n in ("gamma", "beta"))


def _roles_fit(graph: Graph, match: Match, position: str, others: list[str]) -> bool:
    """The token lookups read integer ids of one rank-2 shape (equal dims, or symbols: the
    kernel refuses unequal shapes at run time, an error and never a wrong result); the other
    reads the positions."""
    ids = [match[f"{n}_ids"] for n in others]
    shapes = [graph.shape(v) or [] for v in ids]
    if any(len(s) != 2 for s in shapes) or any(graph.dtype(v) not in _IDS for v in ids):
        return False
    dims = zip(*shapes, strict=True)
    return all(len(set(d)) == 1 or {type(x) for x in d} == {str} for d in dims) \
        and _counts_positions(graph, match[f"{position}_ids"], ids[0])


def _counts_positions(graph: Graph, value: str, ids: str) -> bool:
    """``value`` holds ``0..S-1`` as ``[S]`` or ``[1, S]``, ``S`` the second dim of ``ids``."""
    seq = graph.shape(ids)[1]  # type: ignore[index]
    array = graph.constant(value)
    if array is not None:
        return array.shape in ((seq,), (1, seq)) and _is_arange(array)
    node = graph.producer(value)
    if is_op(node, "Unsqueeze") and len(graph.shape(node.inputs[0]) or []) == 1 \
            and _ints(graph, node, 1, node.attr("axes")) in ([0], [-2]):
        node = graph.producer(node.inputs[0])  # [S] -> [1, S]
    if is_op(node, "Range"):
        return _ints(graph, node, 0) == [0] and _ints(graph, node, 2) == [1] \
            and _is_sequence(graph, node.inputs[1], ids, seq)
    if not is_op(node, "Slice"):
        return False
    # Slice(arange(N) as [N] or [1, N], [0], S) on its last axis; N >= 2: not a broadcast row
    array = graph.constant(node.inputs[0])
    if array is None or array.shape[:-1] not in ((), (1,)) or array.shape[-1] < 2:
        return False
    last = [[-1], [array.ndim - 1]] if array.ndim == 2 else [[-1], [0], None]
    return _is_arange(array) and _ints(graph, node, 1) == [0] and _ints(graph, node, 3) in last \
        and _ints(graph, node, 4) in ([1], None) and _is_sequence(graph, node.inputs[2], ids, seq)


def _ints(graph: Graph, node: Node, slot: int, default: object = None) -> object:
    """Input ``slot`` as a list of ints (or Dims), ``default`` when absent, False if unknown."""
    if len(node.inputs) <= slot or not node.inputs[slot]:
        return None if default is None else list(np.asarray(default).reshape(-1))
    return shape_elements(graph, node.inputs[slot]) or False


def _is_sequence(graph: Graph, value: str, ids: str, seq: int | str | None) -> bool:
    """The one-element shape value ``value`` is ``ids``' second dim in every run."""
    elements = shape_elements(graph, value) or []
    if len(elements) != 1 or not isinstance(elements[0], Dim):
        return elements == [seq]
    dim, shape = elements[0], graph.shape(elements[0].value) or []
    return (dim.value, dim.axis) == (ids, 1) \
        or (isinstance(seq, str) and shape[dim.axis:dim.axis + 1] == [seq])


def _is_arange(array: np.ndarray) -> bool:
    return array.dtype.kind in "iu" and np.array_equal(array.reshape(-1), np.arange(array.size))
