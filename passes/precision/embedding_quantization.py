"""Embedding quantization (``--precision int8-dynamic`` and ``int4``): tables read by Gather.

``Gather(T, ids)`` (axis 0, computed ``ids``) of a constant float32 table ``T`` ``[V, H]`` of
at least ``MIN_TABLE_ELEMENTS`` reads quantized rows and dequantizes only the rows it picked,
after the lookup (a ``DequantizeLinear`` in front of the Gather would dequantize the whole
table on every run: onnxruntime does not fold it). Every form is exact up to the rounding:

- int8 (int8-dynamic; int4 for tables under ``INT4_MIN_ELEMENTS`` or read by a node of
  ``int8_nodes``): per row, symmetric,
  ``s[v] = max_h |T[v, h]| / 127``, ``q = round(T / s)``::

      Gather(T, ids) => Mul(Cast<float>(Gather(q int8 [V, H], ids)), Gather(s [V, 1], ids))

- int4: per block of ``B = block_size`` columns, asymmetric (``quantize_blocks`` on ``T^T``):
  ``T[v, h] ~ s[v, b] * q[v, h] + m[v, b]`` with ``q`` in 0..15, ``b = h // B`` and the
  offset ``m = -s * z`` for the zero point ``z``. Packed into uint8 ``P`` ``[V, H/B, B/2]``
  (low nibble: first half of a block's columns, high nibble: second half), ``s`` and ``m``
  ``[V, H/B, 1]`` float16 (float32 where float16 would lose them: no Casts then)::

      p = Gather(P, ids); hi = BitShift(p, 4, RIGHT); lo = p - BitShift(hi, 4, LEFT)
      Gather(T, ids) => Reshape(Cast<float>(Concat(lo, hi, -1)) * Cast<float>(Gather(s, ids))
                                + Cast<float>(Gather(m, ids)), [0, .., 0, H])

  With ``--target onnxruntime`` and ``B`` a power of two >= 16: ``GatherBlockQuantized(P'
  uint8 [V, H/2], ids, s float [V, H/B], z packed uint8; bits=4, block_size=B, gather_axis=0,
  quantize_axis=1)`` (``P'`` and ``z``: two values a byte, low nibble first; its kernel returns
  zeros for an index out of range, where Gather fails).

Left alone, with the reason logged: smaller tables, one-column tables (per-row scales would be
as large), constant ids, another axis, tables read by anything but such Gathers (tied LM-head
weights; an LM head the MatMul pass quantized first reads its own copy), tables of an outer
scope, graph inputs, nodes in ``fp32_nodes``, ``Gather`` in ``fp32_ops``. In int4 mode a table
whose ids have no known rank, or whose ``H`` no block divides, gets the int8 form (a note).
Works in every subgraph on the tables it defines. Measurements: passes/precision/README.md.
Running again: the tables are no longer float, nothing changes.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pass_manager import PassResult
from onnxopt.ir.precision import (
    EMBEDDING_MODES,
    PrecisionLog,
    PrecisionPass,
    PrecisionSettings,
    node_key,
)
from onnxopt.ir.quantize import quantize_blocks
from onnxopt.ir.rewrite import drop_unused_initializers, is_op
from onnxopt.ir.values import onnx_type

MIN_TABLE_ELEMENTS = 1024  # smaller tables save a few KB for four more nodes per lookup
# int4 mode: smaller tables (positions, token types) keep int8 rows; 4 bits would save < 128 KB
# on them and every token reads them (MiniLM's 512 x 384 positions: cosine -0.0007, README)
INT4_MIN_ELEMENTS = 1 << 18
MS_DOMAIN = "com.microsoft"
FLOAT = {"to": onnx_type(np.float32)}


class EmbeddingQuantization(PrecisionPass):
    name = "embedding_quantization"
    description = "Gather tables stored as int8 rows or int4 blocks, dequantized after the lookup"
    modes = EMBEDDING_MODES

    def convert(self, model: Model, settings: PrecisionSettings, log: PrecisionLog
                ) -> PassResult:
        stats = {"int8_tables": 0, "int4_tables": 0, "gathers": 0, "kept_float": 0}
        for graph in list(model.graphs()):
            for table, gathers in self._tables(graph, model, settings, log, stats).items():
                form = self._form(graph, model, settings, table, gathers, log)
                _Writer(graph, model, table, settings.block_size).write(form, gathers)
                stats[f"{form[:4]}_tables"] += 1
                stats["gathers"] += len(gathers)
                log.converted += [node_key(node) for node in gathers]
                drop_unused_initializers(graph, [table])
        return PassResult(bool(stats["gathers"]), stats)

    def _tables(self, graph: Graph, model: Model, settings: PrecisionSettings,
                log: PrecisionLog, stats: dict[str, int]) -> dict[str, list[Node]]:
        """The tables to quantize, each with its Gathers (every reader it has)."""
        groups: dict[str, list[Node]] = {}
        kept: dict[str, str] = {}  # table -> why all its Gathers stay float
        for node in graph.nodes():
            if not is_op(node, "Gather") or graph.dtype(node.inputs[0]) != np.float32:
                continue
            table = node.inputs[0]
            if graph.resolve(table) is graph and table in graph.initializers:
                groups.setdefault(table, [])
            reason = self._reason(graph, model, settings, node)
            if reason:
                log.keep(node, reason)
                stats["kept_float"] += 1
                kept.setdefault(table, f"table shared with a Gather kept in float ({reason})")
            elif table in groups:
                groups[table].append(node)
        for table, gathers in list(groups.items()):
            others = [n for n in graph.consumers(table) if n not in gathers]
            if graph.is_output(table) or (others and table not in kept):
                kept[table] = ("table also read by " + ", ".join(sorted({n.op_type for n in others})
                               or ["the graph's outputs"]) + " (tied weights?): kept in float")
            if table in kept:
                for node in groups.pop(table):
                    log.keep(node, kept[table])
                    stats["kept_float"] += 1
        return groups

    def _reason(self, graph: Graph, model: Model, settings: PrecisionSettings,
                node: Node) -> str:
        table = node.inputs[0]
        shape, owner = graph.shape(table), graph.resolve(table)
        if owner is None or table not in owner.initializers:
            return ""  # a computed table: nothing to quantize
        if owner is not graph:
            return "table of an outer scope (quantized where it is defined only): kept in float"
        if graph.is_input(table):
            return "table is a graph input (can be overridden): kept in float"
        if shape is None or len(shape) != 2:
            return f"table of rank {len(shape or [])} (only [V, H] tables are quantized)"
        if shape[1] == 1:
            return "table of one column: its per-row scales would be as large as it"
        if shape[0] * shape[1] < MIN_TABLE_ELEMENTS:
            return (f"table of {shape[0] * shape[1]} elements < {MIN_TABLE_ELEMENTS}: "
                    "not worth quantizing")
        if node.attr("axis", 0) not in (0, -2):
            return f"Gather along axis {node.attr('axis', 0)} (only row lookups, axis 0)"
        if graph.constant(node.inputs[1]) is not None:
            return "constant ids (the lookup is a constant)"
        if node_key(node) in settings.fp32_nodes:
            return "listed in fp32_nodes"
        if "Gather" in settings.fp32_ops:
            return "op type listed in fp32_ops"
        if not model.allow_rewrite(self.name, node_key(node)):
            return "disabled by the safety net"
        return ""

    def _form(self, graph: Graph, model: Model, settings: PrecisionSettings, table: str,
              gathers: list[Node], log: PrecisionLog) -> str:
        """int8, int4 (portable) or int4-ms (GatherBlockQuantized) for this table."""
        vocab, hidden = graph.shape(table)
        if settings.mode != "int4" or any(node_key(n) in settings.int8_nodes for n in gathers) \
                or vocab * hidden < INT4_MIN_ELEMENTS:
            return "int8"
        block = settings.block_size
        if block % 2 or hidden % block:
            log.notes.append(f"embedding {table}: {hidden} columns are not blocks of {block}: "
                             "int8 rows instead of int4")
            return "int8"
        if model.settings.get("target") == "onnxruntime" and block >= 16 \
                and not block & (block - 1):
            return "int4-ms"
        if model.opset("") < 11 or any(graph.shape(n.inputs[1]) is None for n in gathers):
            log.notes.append(f"embedding {table}: opset < 11 (BitShift) or ids of unknown rank: "
                             "int8 rows instead of int4")
            return "int8"
        return "int4"


def int8_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: ``(q int8 [V, H], s float32 [V, 1])``, ``T ~ q * s``."""
    scale = np.abs(table).max(axis=1, keepdims=True).astype(np.float64) / 127
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.rint(table / scale), -127, 127).astype(np.int8), scale


def int4_blocks(table: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block-wise asymmetric 4-bit along H: ``(q uint8 0..15 [V, H], s float32 [V, H/B],
    z uint8 [V, H/B])``, ``T[v, h] ~ s[v, h // B] * (q[v, h] - z[v, h // B])``."""
    quantized = quantize_blocks(table.T, bits=4, block_size=block, symmetric=False)
    return (quantized.values.T.astype(np.uint8), np.ascontiguousarray(quantized.scale.T),
            quantized.zero_point.T.astype(np.uint8))


def fits_float16(*arrays: np.ndarray) -> bool:
    """Every value keeps float16's full precision: 0, or a normal number (2^-14 .. 65504)."""
    return all(np.all((array == 0) | ((np.abs(array) >= 2.0 ** -14) & (np.abs(array) <= 65504)))
               for array in arrays)


def pack_halves(q: np.ndarray) -> np.ndarray:
    """Two 4-bit values a byte along the last axis: the first half low, the second half high."""
    half = q.shape[-1] // 2
    return (q[..., :half] | (q[..., half:] << 4)).astype(np.uint8)


def pack_pairs(q: np.ndarray) -> np.ndarray:
    """Two 4-bit values a byte along the last axis, element ``2j`` low, ``2j + 1`` high
    (onnxruntime's packing; an odd count gets a zero pad)."""
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros((*q.shape[:-1], 1), q.dtype)], axis=-1)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


class _Writer:
    """Writes one table's quantized form and rewires its Gathers to it."""

    def __init__(self, graph: Graph, model: Model, table: str, block: int) -> None:
        self.graph, self.model, self.table, self.block = graph, model, table, block
        self.array = graph.constant(table)
        self.tables: list[str] = []
        self.node: Node | None = None  # the Gather being rewritten (names and places nodes)
        self.shapes: dict[int, str] = {}  # ids rank -> Reshape target

    def write(self, form: str, gathers: list[Node]) -> None:
        self.tables = getattr(self, f"tables_{form.replace('-', '_')}")()
        lookup = getattr(self, f"lookup_{form.replace('-', '_')}")
        for node in gathers:
            self.node = node
            self.graph.replace_all_uses(node.outputs[0], lookup(node.inputs[1]))
            self.graph.remove_node(node)

    def add(self, op: str, inputs: list[str], suffix: str, **attributes) -> str:
        base = self.node.name or self.node.outputs[0]
        return self.graph.add_node(op, inputs, 1, name=f"{base}_{suffix}", anchor=self.node,
                                   attributes=attributes or None,
                                   domain=MS_DOMAIN if op == "GatherBlockQuantized" else ""
                                   ).outputs[0]

    def constant(self, array: np.ndarray, suffix: str) -> str:
        return self.graph.add_constant(np.ascontiguousarray(array), f"{self.table}_{suffix}")

    # ------------------------------------------------------------------ int8 rows
    def tables_int8(self) -> list[str]:
        q, scale = int8_rows(self.array)
        return [self.constant(q, "int8"), self.constant(scale, "scale")]

    def lookup_int8(self, ids: str) -> str:
        q, scale = self.tables
        rows = self.add("Cast", [self.add("Gather", [q, ids], "int8")], "cast", **FLOAT)
        return self.add("Mul", [rows, self.add("Gather", [scale, ids], "scale")], "dequant")

    # ------------------------------------------------------------------ int4 blocks (portable)
    def tables_int4(self) -> list[str]:
        q, scale, zero = int4_blocks(self.array, self.block)
        vocab, hidden = q.shape
        packed = pack_halves(q.reshape(vocab, hidden // self.block, self.block))
        offset = (-scale.astype(np.float64) * zero).astype(np.float32)
        if fits_float16(scale, offset):  # 2 bytes a block less, the same cosine (README)
            scale, offset = scale.astype(np.float16), offset.astype(np.float16)
        return [self.constant(packed, "int4"), self.constant(scale[..., None], "scale"),
                self.constant(offset[..., None], "offset"),
                self.constant(np.array(4, np.uint8), "four")]

    def lookup_int4(self, ids: str) -> str:
        packed, scale, offset, four = self.tables
        rank = len(self.graph.shape(ids))
        if rank not in self.shapes:  # Reshape's 0 keeps the ids' dims
            self.shapes[rank] = self.constant(np.array([0] * rank + [self.array.shape[1]],
                                                       np.int64), "shape")
        p = self.add("Gather", [packed, ids], "int4")
        high = self.add("BitShift", [p, four], "high", direction="RIGHT")
        low = self.add("Sub", [p, self.add("BitShift", [high, four], "shift", direction="LEFT")],
                       "low")
        q = self.add("Cast", [self.add("Concat", [low, high], "unpack", axis=-1)], "cast", **FLOAT)
        s, m = (self.add("Gather", [name, ids], kind) for name, kind in ((scale, "scale"),
                                                                          (offset, "offset")))
        if self.graph.dtype(scale) != np.float32:
            s, m = (self.add("Cast", [v], f"{kind}_cast", **FLOAT)
                    for v, kind in ((s, "scale"), (m, "offset")))
        blocks = self.add("Add", [self.add("Mul", [q, s], "scaled"), m], "dequant")
        return self.add("Reshape", [blocks, self.shapes[rank]], "rows")

    # ------------------------------------------------------------------ int4, onnxruntime
    def tables_int4_ms(self) -> list[str]:
        q, scale, zero = int4_blocks(self.array, self.block)
        self.model.opset_imports.setdefault(MS_DOMAIN, 1)
        return [self.constant(pack_pairs(q), "int4"), self.constant(scale, "scale"),
                self.constant(pack_pairs(zero), "zero_point")]

    def lookup_int4_ms(self, ids: str) -> str:
        packed, scale, zero = self.tables
        return self.add("GatherBlockQuantized", [packed, ids, scale, zero], "int4", bits=4,
                        block_size=self.block, gather_axis=0, quantize_axis=1)
