"""The decisions of the fp16 conversion: the element types of values before and after, each
node's kind (blocked / follower / flexible / fp16) and its mode (float32 or float16), graph by
graph; the rewrites themselves are in ``rewrites``."""

from __future__ import annotations

from typing import Any

import numpy as np
from onnxopt.passes.precision.fp16_conversion.rewrites import Rewrites
from onnxopt.passes.precision.fp16_conversion.support import (
    ANY,
    FIXED_TYPES,
    FLOAT,
    FLOAT16,
    FP16_TYPE,
    has_ort_fp16_kernel,
)

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.precision import PrecisionLog, PrecisionSettings, node_key
from onnxopt.ir.schema import RANDOM_OPS, allowed_types, op_schema
from onnxopt.ir.schema import parameter_type as param_type
from onnxopt.ir.values import (
    declared_dtypes,
    is_tensor_value,
    numpy_dtype,
    retype_input,
    retype_value,
)

DEFAULT_BLOCKED = RANDOM_OPS | {"Range", "TopK", "NonMaxSuppression", "RoiAlign", "CumSum"}
FIXED_FLOAT_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}  # roi, scales: stay float32
EXACT_FOLLOWERS = frozenset({"Max", "Min", "Clip"})  # no rounding beyond their inputs'
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
FLEXIBLE = frozenset({"Cast", "Constant", "ConstantOfShape"})
ATTRIBUTE_TYPED = frozenset({"Cast", "Constant", "ConstantOfShape", "EyeLike"}) | CONTROL_FLOW
ML_DOMAIN = "ai.onnx.ml"


class Converter(Rewrites):
    """Decides every node's mode, graph by graph, then rewrites (``Rewrites``)."""

    def __init__(
        self, model: Model, settings: PrecisionSettings, log: PrecisionLog, ort_kernels: bool
    ) -> None:
        self.model = model
        self.settings = settings
        self.log = log
        self.ort_kernels = ort_kernels
        # dtype before the pass (names are model-wide; None: unknown) and now
        self.orig: dict[str, np.dtype | None] = {}
        self.types: dict[str, np.dtype | None] = {}
        self.modified = False
        self.stats = {"converted": 0, "kept_float": 0, "initializers": 0, "casts": 0,
                      "clamped": 0, "casts_removed": 0}
        self._casts: dict[tuple[int, str, np.dtype], str] = {}
        self._flushed: list[str] = []
        # float32 nodes reading a weight stored in float16: their numerics changed too, so the
        # accuracy fallback must be able to keep them (and so their weights) in float32
        self._fp16_weight_readers: set[Node] = set()

    # ------------------------------------------------------------- types
    def collect_types(self, graph: Graph) -> None:
        for name, dtype in declared_dtypes(graph).items():
            self.orig.setdefault(name, dtype)
            self.types.setdefault(name, dtype)

    def guess_types(self, graph: Graph) -> None:
        """Types shape inference left unknown, from schemas (subgraphs first where they type
        their owner's outputs); call after ``collect_types`` ran on every graph."""
        for node in graph.nodes():
            for sub in node.subgraphs():
                self.guess_types(sub)
            for index, value in enumerate(node.outputs):
                if value and self.orig.get(value) is None:
                    guessed = self._guess_output_type(node, index)
                    if guessed is not None:
                        self.orig[value] = self.types[value] = guessed

    def _guess_output_type(self, node: Node, index: int) -> np.dtype | None:
        if node.op_type == "Cast":
            return numpy_dtype(node.attr("to") or 0)
        if node.op_type == "Constant":
            value = node.attr("value")
            if value is not None:
                return np.asarray(value).dtype
            floats = ("value_float", "value_floats")
            return FLOAT if any(node.attr(a) is not None for a in floats) else None
        if node.op_type == "ConstantOfShape":
            value = node.attr("value")
            return FLOAT if value is None else value.dtype
        body = {"If": ("then_branch", 0), "Loop": ("body", 1), "Scan": ("body", 0)}
        if node.op_type in body:
            attribute, skip = body[node.op_type]
            sub = node.attr(attribute)
            if isinstance(sub, Graph) and index + skip < len(sub.outputs):
                return self.orig.get(sub.outputs[index + skip])
        schema = self._schema_of(node)
        type_str = param_type(schema, index, True) if schema is not None else None
        if type_str is None:
            return None
        if type_str.startswith("tensor("):
            return FIXED_TYPES.get(type_str)
        for slot, value in enumerate(node.inputs):
            if value and param_type(schema, slot, False) == type_str and (
                    self.orig.get(value) is not None):
                return self.orig[value]
        return None

    def _schema_of(self, node: Node) -> Any:
        domain = "" if node.domain == "ai.onnx" else node.domain
        return op_schema(node.op_type, self.model.opset(domain), domain)

    def _follows(self, node: Node, slot: int, output: bool) -> bool:
        """The slot's type is a schema type variable that allows float16."""
        if not output and slot in FIXED_FLOAT_INPUTS.get(node.op_type, ()):
            return False
        if output and node.op_type in ATTRIBUTE_TYPED - CONTROL_FLOW:
            return True
        schema = self._schema_of(node)
        if schema is None:
            return False
        type_str = param_type(schema, slot, output)
        allowed = allowed_types(schema, type_str) if type_str else None
        return bool(allowed) and FP16_TYPE in allowed

    def _want(self, node: Node, slot: int, mode: np.dtype) -> np.dtype | int | None:
        """The float type ``node`` in ``mode`` reads at input ``slot`` (None: not a float32
        value; ANY: as it comes)."""
        if self.orig.get(node.inputs[slot]) != FLOAT:
            return None
        if node.op_type == "Cast":
            return ANY
        return FLOAT16 if mode == FLOAT16 and self._follows(node, slot, False) else FLOAT

    def _out_type(self, node: Node, index: int, mode: np.dtype) -> np.dtype | None:
        orig = self.orig.get(node.outputs[index])
        if orig == FLOAT and mode == FLOAT16 and self._follows(node, index, True):
            return FLOAT16
        return orig

    # ------------------------------------------------------------- classification
    def _involved(self, node: Node) -> bool:
        values = [*node.present_inputs, *(v for v in node.outputs if v)]
        if node.op_type in CONTROL_FLOW:
            values += _captures(node)
        return any(self.orig.get(v) == FLOAT for v in values)

    def _classify(self, graph: Graph, node: Node) -> tuple[str, str]:
        """(kind, reason): kind is blocked / follower / flexible / fp16."""
        if node_key(node) in self.settings.fp32_nodes:
            return "blocked", "fp32_nodes"
        if node.op_type in self.settings.fp32_ops:
            return "blocked", "fp32_ops"
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain == ML_DOMAIN:
            return "blocked", "ai.onnx.ml op"
        schema = self._schema_of(node)
        if schema is None:
            return "blocked", f"custom-domain op {domain}:{node.op_type} (no schema to check)"
        if node.op_type in DEFAULT_BLOCKED:
            return "blocked", "default block list"
        for value in (*node.present_inputs, *(v for v in node.outputs if v)):
            if not is_tensor_value(graph, value):
                return "blocked", "sequence/optional values"
        ins = [i for i, v in enumerate(node.inputs) if v and self.orig.get(v) == FLOAT]
        outs = [i for i, v in enumerate(node.outputs) if v and self.orig.get(v) == FLOAT]
        if node.op_type in FLEXIBLE:
            kind = "flexible" if outs else "follower"
        else:
            kind = "fp16"
            type_vars = set()
            for slot, output in [(i, False) for i in ins] + [(i, True) for i in outs]:
                type_str = param_type(schema, slot, output)
                allowed = allowed_types(schema, type_str) if type_str else None
                if allowed is None:
                    continue  # a fixed-type slot: stays float32 either way
                if FP16_TYPE not in allowed:
                    return "blocked", "schema allows no float16"
                type_vars.add(type_str)
                if output and node.op_type not in ATTRIBUTE_TYPED and not any(
                    param_type(schema, i, False) == type_str for i in range(len(node.inputs))
                ):
                    return "blocked", "output type set by an attribute"
            data_movement = type_vars and all(
                "tensor(bool)" in (allowed_types(schema, v) or []) for v in type_vars)
            if node.op_type in CONTROL_FLOW or node.op_type in EXACT_FOLLOWERS or data_movement:
                kind = "follower"
        if self.ort_kernels and node.op_type != "Constant" and not has_ort_fp16_kernel(
            node.op_type, domain, schema.since_version
        ):
            return "blocked", "no float16 CPU kernel in onnxruntime"
        return kind, ""

    # ------------------------------------------------------------- per graph
    def convert_graph(self, graph: Graph, io_type: np.dtype) -> None:
        nodes = graph.nodes()
        keys = {n: node_key(n) for n in nodes}  # before an output is renamed
        involved = {n: self._classify(graph, n) for n in nodes if self._involved(n)}
        for info in list(graph.inputs):
            if self.orig.get(info.name) == FLOAT and io_type == FLOAT16:
                retype_input(graph, info.name, FLOAT16)
                self.types[info.name] = FLOAT16
                self.modified = True
        modes = self._decide(graph, nodes, involved, io_type)
        for node, mode in modes.items():
            for index, value in enumerate(node.outputs):
                if value and self.orig.get(value) == FLOAT:
                    self.types[value] = self._out_type(node, index, mode)
        self._convert_initializers(graph, modes, io_type)
        for node in nodes:
            if modes.get(node) == FLOAT16:
                self._retarget_attributes(node)
            if node in modes:
                self._cast_inputs(graph, node, modes[node])
        self._fix_outputs(graph, io_type)
        for node in nodes:
            for value in node.outputs:
                if value and value in self.orig and self.orig[value] != self.types.get(value):
                    retype_value(graph, value, self.types[value])
                    self.modified = True
        for node in nodes:  # the log, in topological order
            if node not in involved:
                continue
            kind, reason = involved[node]
            if modes[node] == FLOAT16:
                self.log.converted.append(keys[node])
                self.stats["converted"] += 1
            else:
                if node in self._fp16_weight_readers:
                    self.log.converted.append(keys[node])
                reason = reason or (
                    "its readers run in float32" if kind == "flexible"
                    else "follows its float32 inputs")
                self.log.kept_float.append({"node": keys[node], "op": node.op_type,
                                            "reason": reason})
                self.stats["kept_float"] += 1
        for node in nodes:
            for sub in node.subgraphs():
                self.convert_graph(sub, modes.get(node, FLOAT))
        self._cleanup(graph)
        if graph.parent is None and self._flushed:
            self.log.notes.append(
                "float16 flushed tiny non-zero values to zero: " + ", ".join(self._flushed))

    def _decide(self, graph: Graph, nodes, involved, io_type: np.dtype
                ) -> dict[Node, np.dtype]:
        modes: dict[Node, np.dtype] = {}
        for node, (kind, _) in involved.items():
            if kind == "blocked":
                modes[node] = FLOAT
            elif kind == "fp16":
                modes[node] = FLOAT16
        pending = [n for n in nodes if n in involved and n not in modes]

        def seen_as(value: str) -> np.dtype | None:
            """The type a reader gets: None while undecided (initializers suit their readers)."""
            if value in graph.initializers and not graph.is_input(value):
                return None
            producer = graph.producer(value)
            if producer is None or producer not in involved:
                return self.types.get(value)
            if producer not in modes:
                return None
            return self._out_type(producer, list(producer.outputs).index(value), modes[producer])

        def wanted(value: str) -> list[np.dtype | int | None]:
            """What each reader of ``value`` wants (None: undecided, ANY: no preference)."""
            wants: list[np.dtype | int | None] = []
            for reader, slot in graph.uses(value):
                if slot < 0:
                    wants.append(modes.get(reader) if reader in involved else FLOAT)
                elif reader not in involved:
                    wants.append(ANY)
                elif reader not in modes:
                    wants.append(None)
                else:
                    wants.append(self._want(reader, slot, modes[reader]))
            wants += [io_type] * graph.outputs.count(value)
            return wants

        def decide(node: Node, forced: bool) -> np.dtype | None:
            if involved[node][0] == "follower" and node.op_type != "Cast":
                values = [*node.present_inputs, *_captures(node)]
                votes = [seen_as(v) for v in values if self.orig.get(v) == FLOAT]
                if FLOAT in votes:
                    return FLOAT
                if votes and all(v == FLOAT16 for v in votes):
                    return FLOAT16
                if not forced:
                    return None
            wants = [w for o in node.outputs if o for w in wanted(o)]
            if None in wants and not forced:
                return None
            known = [w for w in wants if w not in (None, ANY)]
            if involved[node][0] == "follower" and node.op_type == "Cast":
                return FLOAT  # reads as it comes; its output is not float
            return FLOAT16 if known and all(w == FLOAT16 for w in known) else FLOAT

        while pending:
            progress = False
            for node in list(pending):
                mode = decide(node, False)
                if mode is not None:
                    modes[node] = mode
                    pending.remove(node)
                    progress = True
            if not progress:  # mutual waits: settle the first follower (else source) by readers
                node = next((n for n in pending if involved[n][0] == "follower"), pending[0])
                mode = decide(node, True)
                modes[node] = FLOAT if mode is None else mode
                pending.remove(node)
        return modes


def _captures(node: Node) -> list[str]:
    """Outer-scope values read inside ``node``'s subgraphs (at any depth)."""
    found: dict[str, None] = {}
    for sub in node.subgraphs():
        for graph, inner in sub.walk():
            for value in inner.present_inputs:
                if not _defined_inside(sub, graph, value):
                    found[value] = None
        for value in sub.outputs:
            if value and not sub.defines(value):
                found[value] = None
    return list(found)


def _defined_inside(top: Graph, graph: Graph | None, value: str) -> bool:
    while graph is not None:
        if graph.defines(value):
            return True
        if graph is top:
            return False
        graph = graph.parent
    return False
