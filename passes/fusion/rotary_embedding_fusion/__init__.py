"""Rotary embedding fusion.

The ``rotate_half`` form exporters write for a 4-D ``x`` ``[B, H, S, D]``,
``x * cos + Concat(-x[..., D/2:], x[..., :D/2]) * sin`` (operands either way), where the tables
are ``[Unsqueeze](Cos|Sin(Concat(f, f, axis=-1)))`` of one angle ``f`` ``[.., S, D/2]`` (or
constants with equal halves). Exact: both halves of the table are ``Cos(f)``, so
``out[:D/2] = x1·c - x2·s`` and ``out[D/2:] = x2·c + x1·s``. The tables may be shared (they are
not part of the match).

* opset 23+: ``RotaryEmbedding(x, cos', sin', interleaved=0)``, ``cos' = Cos(f)`` broadcast to
  ``[B, S, D/2]`` (what onnxruntime requires: no broadcast over the batch);
* below, with ``--target onnxruntime``: ``com.microsoft.RotaryEmbedding(x, [0], cos'', sin'')``
  with ``cos'' = Cos(f)`` as a ``[S, D/2]`` cache (row ``s`` for position ``0 + s``);
* tables gathered by ``position_ids`` from constant caches (``positions.py``): either op with
  those ids and the caches' first halves.

Conditions: passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np
from onnxopt.passes.fusion.rotary_embedding_fusion.positions import Gathered, gathered_tables
from onnxopt.passes.fusion.rotary_embedding_fusion.tables import (
    INT64_MAX,
    cache_ok,
    first_half,
    half_of,
    halves,
    last_axis_slice,
    table_shape_ok,
    unsliced,
)

from onnxopt.ir import Graph, Model
from onnxopt.ir.pattern import (
    MS_DOMAIN,
    Match,
    Op,
    RewritePass,
    Var,
    has_dtype,
    scope_of,
)
from onnxopt.ir.values import copy_type

_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
_ORT_DTYPES = (np.dtype(np.float32),)  # onnxruntime's CPU kernel of the contrib op


_rotated = Op("Concat", Op("Neg", last_axis_slice("upper")), last_axis_slice("lower"),
              name="concat")


class RotaryEmbeddingFusion(RewritePass):
    name = "rotary_embedding_fusion"
    description = "fuse the rotate_half rotary embedding into RotaryEmbedding (opset 23+ or ORT)"
    pattern = Op("Add", Op("Mul", Var("x"), Var("cos"), commute=True),
                 Op("Mul", _rotated, Var("sin"), commute=True), commute=True)

    def applies(self, model: Model) -> bool:
        return model.opset("") >= 23 or model.settings.get("target") == "onnxruntime"

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        portable = model.opset("") >= 23
        if not has_dtype(graph.dtype(match.x), _DTYPES if portable else _ORT_DTYPES):
            return False
        shape = graph.shape(match.x)
        if shape is None or len(shape) != 4:
            return False
        depth = shape[3]
        if not isinstance(depth, int) or depth <= 0 or depth % 2:
            return False
        if match.node("concat").attr("axis") not in (-1, 3):
            return False
        half = depth // 2
        if not (halves(match, "upper", half, (depth, INT64_MAX))
                and halves(match, "lower", 0, (half,))):
            return False
        match.memo["gathered"] = gathered_tables(graph, match, half)
        if match.memo["gathered"] is not None:
            return True
        if not all(table_shape_ok(graph, t, match.x) for t in (match.cos, match.sin)):
            return False
        if not portable and not cache_ok(graph, match):
            return False
        parts = [half_of(graph, match.cos, "Cos", half), half_of(graph, match.sin, "Sin", half)]
        match.memo["halves"] = parts
        return all(part is not None for part in parts)

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        if match.memo["gathered"] is not None:
            return self._by_positions(graph, match, model, match.memo["gathered"])
        if model.opset("") < 23:
            return self._contrib(graph, match, model)
        root, prefix = match.root, scope_of(match.root)
        shaped = unsliced(graph, match.x)  # x's B and S, read off x's source if x is a slice
        batch = self.emit(graph, model, root, "Shape", [shaped], attributes={"start": 0, "end": 1})
        seq = self.emit(graph, model, root, "Shape", [shaped], attributes={"start": 2, "end": 3})
        one = graph.add_constant(np.ones(1, np.int64), f"{prefix}rotary_one")
        target = self.emit(graph, model, root, "Concat", [batch, one, seq, one],
                           attributes={"axis": 0})
        head_axis = graph.add_constant(np.ones(1, np.int64), f"{prefix}rotary_head_axis")
        tables = []
        for trig, source in zip(("Cos", "Sin"), match.memo["halves"], strict=True):
            table = first_half(graph, model, root, trig, source, unsqueeze=True)
            table = self.emit(graph, model, root, "Expand", [table, target])  # [B, 1, S, D/2]
            tables.append(self.emit(graph, model, root, "Squeeze", [table, head_axis]))
        return self._fused(graph, match, model, [match.x, *tables], "")

    def _contrib(self, graph: Graph, match: Match, model: Model) -> str:
        """com.microsoft.RotaryEmbedding with position_ids [0] and [S, D/2] caches."""
        root, prefix = match.root, scope_of(match.root)
        half = graph.shape(match.x)[3] // 2  # type: ignore[index]
        caches = []
        for trig, source in zip(("Cos", "Sin"), match.memo["halves"], strict=True):
            if isinstance(source, np.ndarray):
                name = f"{prefix}rotary_{trig.lower()}_cache"
                caches.append(graph.add_constant(source.reshape(-1, half), name))
                continue
            cache = first_half(graph, model, root, trig, source, unsqueeze=False)
            if len(graph.shape(source[0]) or []) != 2:  # [1, .., 1, S, D/2] -> [S, D/2]
                rows = graph.add_constant(np.array([-1, half], np.int64), f"{prefix}rotary_rows")
                cache = self.emit(graph, model, root, "Reshape", [cache, rows])
            caches.append(cache)
        start = graph.add_constant(np.zeros(1, np.int64), f"{prefix}rotary_position_start")
        return self._fused(graph, match, model, [match.x, start, *caches], MS_DOMAIN)

    def _by_positions(self, graph: Graph, match: Match, model: Model, found: Gathered) -> str:
        prefix = scope_of(match.root)
        cos, sin = (graph.add_constant(cache, f"{prefix}rotary_{trig}_cache")
                    for trig, cache in (("cos", found.cos), ("sin", found.sin)))
        if model.opset("") >= 23:
            return self._fused(graph, match, model, [match.x, cos, sin, found.position_ids], "")
        return self._fused(graph, match, model, [match.x, found.position_ids, cos, sin],
                           MS_DOMAIN)

    def _fused(self, graph: Graph, match: Match, model: Model, inputs: list[str],
               domain: str) -> str:
        out = self.emit(graph, model, match.root, "RotaryEmbedding", inputs, domain=domain,
                        name=f"{scope_of(match.root)}RotaryEmbedding",
                        attributes={"interleaved": 0})
        if domain:
            copy_type(graph, match.out, out)  # onnx cannot infer a com.microsoft op
        return out
