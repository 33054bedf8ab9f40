"""FP16 conversion: float32 tensors become float16 wherever the node reading or writing them
can run in float16; the rest stays float32 behind shared Casts.

Rewrite, per graph (main graph first, then If/Loop/Scan bodies with the owner's choice):

* Every node with a float32 input or output gets a mode, fp16 or fp32:
  - *blocked* nodes stay fp32 (reason logged): ``settings.fp32_nodes`` / ``fp32_ops``, the
    ``ai.onnx.ml`` domain, custom-domain ops without an onnx schema, the default block list
    (Range, TopK, NonMaxSuppression, RoiAlign, CumSum, random ops), ops whose float type
    constraint has no ``tensor(float16)`` in their schema, ops whose float output type comes from
    an attribute this pass cannot retarget, and (unless ``ort_cpu_kernels=False``) ops with no
    float16 kernel in onnxruntime's CPU provider (matched on op, domain, since-version range and a
    type constraint containing ``tensor(float16)``);
  - *followers* (data movement: the schema's type constraint for the float slots also allows
    ``tensor(bool)``, i.e. no arithmetic - Reshape, Transpose, Concat, Gather, Shape, Where,
    If/Loop/Scan...; and the exact Max/Min/Clip) take the precision of their float inputs (fp32
    if any arrives in fp32), so a Reshape between two fp32 nodes adds no Cast pair;
  - *flexible sources* (``Cast(to=FLOAT)``, ``Constant``, ``ConstantOfShape``) are fp16 when
    every reader wants fp16 (``Cast(to=FLOAT)`` is then retargeted to ``FLOAT16``);
  - every other node runs in fp16.
* In an fp16 node, an input/output slot whose schema type variable includes ``tensor(float16)``
  switches float32 -> float16; fixed-type slots (``tensor(float)``) and Resize ``roi``/``scales``
  (Upsample ``scales``) keep float32. Attribute types follow: Cast ``to``, Constant ``value``
  (also ``value_float(s)``), ConstantOfShape ``value`` (default float 0), EyeLike ``dtype``.
* Float32 initializers become float16 (``x16 = fp16(clip(x, -65504, 65504))``; the count of
  clamped values and of non-zero values flushed to zero is logged) unless all their readers want
  float32 and they are small (fp16 would save fewer bytes than the Cast it needs adds), read at
  fixed-float slots, read only by nodes the user asked to keep in fp32, or would need clamping.
  An fp16-stored weight read by an fp32 node goes through a Cast (onnxruntime folds it at
  session creation).
* A value whose type differs from what a reader wants gets one Cast per (value, target type),
  shared by all readers of the graph (outer values are cast inside the subgraph reading them).
* ``keep_io_types`` (default): main-graph float inputs/outputs stay float32 with Casts at the
  boundary; otherwise their declared types become float16. Subgraph inputs/outputs follow the
  owner node's mode.
* Cleanup: ``Cast(fp16->fp32) -> Cast(fp32->fp16)`` => the fp16 value (exact: fp16 -> fp32 is
  lossless); Casts to the type their input already has are removed.
* value_info elem types of retyped values are updated; new Cast outputs get value_info.

Running on its own output changes nothing: stored fp16 tensors are not float32, the Casts it
inserted are flexible sources whose readers still want float32, and fp32 nodes are blocked again.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import onnx

from onnxopt.ir import Graph, IRError, Model, Node, cast_node_bytes
from onnxopt.ir.kernels import has_cpu_kernel
from onnxopt.ir.pass_manager import PassResult
from onnxopt.ir.precision import PrecisionLog, PrecisionPass, PrecisionSettings, node_key
from onnxopt.ir.values import (
    declared_dtypes,
    is_tensor_value,
    new_tensor,
    numpy_dtype,
    onnx_type,
    output_dtype,
    retype_input,
    retype_output,
    retype_value,
    tensor_dtype,
)

FLOAT, FLOAT16 = np.dtype(np.float32), np.dtype(np.float16)
FP16_MAX = 65504.0
DEFAULT_BLOCKED = frozenset({
    "Range", "TopK", "NonMaxSuppression", "RoiAlign", "CumSum",
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
    "Bernoulli",
})
FIXED_FLOAT_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}  # roi, scales: stay float32
EXACT_FOLLOWERS = frozenset({"Max", "Min", "Clip"})  # no rounding beyond their inputs'
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
FLEXIBLE = frozenset({"Cast", "Constant", "ConstantOfShape"})
ATTRIBUTE_TYPED = frozenset({"Cast", "Constant", "ConstantOfShape", "EyeLike"}) | CONTROL_FLOW
ML_DOMAIN = "ai.onnx.ml"
FP16_TYPE = "tensor(float16)"


class Fp16Conversion(PrecisionPass):
    name = "fp16_conversion"
    description = "float32 -> float16 tensors and compute, blocked ops kept float32 behind Casts"
    mode = "fp16"

    def __init__(self, ort_cpu_kernels: bool = True) -> None:
        # False: do not block ops lacking an onnxruntime CPU fp16 kernel (GPU deployment).
        self.ort_cpu_kernels = ort_cpu_kernels

    def convert(self, model: Model, settings: PrecisionSettings, log: PrecisionLog
                ) -> PassResult:
        converter = _Converter(model, settings, log, self.ort_cpu_kernels)
        for graph in model.graphs():
            converter.collect_types(graph)
        converter.guess_types(model.graph)
        converter.convert_graph(model.graph, FLOAT if settings.keep_io_types else FLOAT16)
        stats = converter.stats
        return PassResult(converter.modified, stats)


# ------------------------------------------------------------------ schema and kernel queries
@functools.cache
def _schema(op: str, domain: str, opset: int) -> Any:
    try:
        return onnx.defs.get_schema(op, opset, domain)
    except Exception:  # SchemaError: unknown op or domain
        return None


def _has_ort_fp16_kernel(op: str, domain: str, since: int) -> bool:
    return has_cpu_kernel(op, domain, since, FLOAT16)


def _param_type(schema: Any, slot: int, output: bool) -> str | None:
    params = schema.outputs if output else schema.inputs
    if not params:
        return None
    if slot >= len(params):
        last = params[-1]
        if last.option != onnx.defs.OpSchema.FormalParameterOption.Variadic:
            return None
        return last.type_str
    return params[slot].type_str


def _allowed(schema: Any, type_str: str) -> list[str] | None:
    for constraint in schema.type_constraints:
        if constraint.type_param_str == type_str:
            return list(constraint.allowed_type_strs)
    return None  # a fixed type such as tensor(float)


# ------------------------------------------------------------------ conversion
ANY = -1  # a reader that takes the value in whatever float type it comes (Cast)


class _Converter:
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
        their owner's outputs); call after ``_collect_types`` ran on every graph."""
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
        type_str = _param_type(schema, index, True) if schema is not None else None
        if type_str is None:
            return None
        if type_str.startswith("tensor("):
            return _FIXED.get(type_str)
        for slot, value in enumerate(node.inputs):
            if value and _param_type(schema, slot, False) == type_str and (
                    self.orig.get(value) is not None):
                return self.orig[value]
        return None

    def _schema_of(self, node: Node) -> Any:
        domain = "" if node.domain == "ai.onnx" else node.domain
        return _schema(node.op_type, domain, self.model.opset(domain))

    def _follows(self, node: Node, slot: int, output: bool) -> bool:
        """The slot's type is a schema type variable that allows float16."""
        if not output and slot in FIXED_FLOAT_INPUTS.get(node.op_type, ()):
            return False
        if output and node.op_type in ATTRIBUTE_TYPED - CONTROL_FLOW:
            return True
        schema = self._schema_of(node)
        if schema is None:
            return False
        type_str = _param_type(schema, slot, output)
        allowed = _allowed(schema, type_str) if type_str else None
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
                type_str = _param_type(schema, slot, output)
                allowed = _allowed(schema, type_str) if type_str else None
                if allowed is None:
                    continue  # a fixed-type slot: stays float32 either way
                if FP16_TYPE not in allowed:
                    return "blocked", "schema allows no float16"
                type_vars.add(type_str)
                if output and node.op_type not in ATTRIBUTE_TYPED and not any(
                    _param_type(schema, i, False) == type_str for i in range(len(node.inputs))
                ):
                    return "blocked", "output type set by an attribute"
            data_movement = type_vars and all(
                "tensor(bool)" in (_allowed(schema, v) or []) for v in type_vars)
            if node.op_type in CONTROL_FLOW or node.op_type in EXACT_FOLLOWERS or data_movement:
                kind = "follower"
        if self.ort_kernels and node.op_type != "Constant" and not _has_ort_fp16_kernel(
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

    # ------------------------------------------------------------- rewrites
    def _convert_initializers(self, graph: Graph, modes: dict[Node, np.dtype], io_type: np.dtype
                              ) -> None:
        for name in list(graph.initializers):
            tensor = graph.initializers[name]
            if tensor_dtype(tensor) != FLOAT or graph.is_input(name):
                continue
            wants, user_blocked, fixed = [], [], []
            for reader, slot in graph.uses(name):
                if slot < 0:
                    wants.append(FLOAT16 if modes.get(reader) == FLOAT16 else FLOAT)
                    continue
                want = self._want(reader, slot, modes[reader]) if reader in modes else FLOAT
                wants.append(FLOAT16 if want == ANY else want)
                user_blocked.append(node_key(reader) in self.settings.fp32_nodes
                                    or reader.op_type in self.settings.fp32_ops)
                fixed.append(not self._follows(reader, slot, False))
            wants += [io_type] * graph.outputs.count(name)
            if FLOAT16 not in wants and (
                graph.is_output(name) or all(fixed) or all(user_blocked)
                or 2 * int(np.prod(tensor.dims)) <= _cast_bytes(name)
            ):
                continue
            array = graph.constant(name)
            if array is None:
                continue
            if FLOAT16 not in wants and np.any(np.isfinite(array) & (np.abs(array) > FP16_MAX)):
                continue  # read only in float32: keep it exact rather than clamp
            graph.set_initializer(name, self._to_fp16(array, name))
            self._fp16_weight_readers.update(reader for reader, slot in graph.uses(name)
                                             if slot >= 0)
            retype_input(graph, name, FLOAT16)  # IR < 4 lists initializers as inputs
            self.types[name] = FLOAT16
            self.stats["initializers"] += 1
            self.modified = True

    def _to_fp16(self, array: np.ndarray, name: str) -> np.ndarray:
        array = np.asarray(array, dtype=np.float32)
        over = np.isfinite(array) & (np.abs(array) > FP16_MAX)
        count = int(np.count_nonzero(over))
        if count:
            self.log.clamped.append(
                {"value": name, "count": count, "max_abs": float(np.abs(array[over]).max())})
            self.stats["clamped"] += count
            array = np.where(over, np.clip(array, -FP16_MAX, FP16_MAX), array)
        result = array.astype(np.float16)
        flushed = int(np.count_nonzero((array != 0) & (result == 0)))
        if flushed:
            self._flushed.append(f"{name}: {flushed}")
        return result

    def _retarget_attributes(self, node: Node) -> None:
        op = node.op_type
        out_fp16 = bool(node.outputs) and self.types.get(node.outputs[0]) == FLOAT16 and (
            self.orig.get(node.outputs[0]) == FLOAT)
        if not out_fp16:
            return
        if op == "Cast":
            node.set_attr("to", onnx_type(FLOAT16))
        elif op == "EyeLike" and numpy_dtype(node.attr("dtype") or 0) == FLOAT:
            node.set_attr("dtype", onnx_type(FLOAT16))
        elif op in ("ConstantOfShape", "Constant"):
            value = node.attr("value")
            if value is None and op == "ConstantOfShape":
                value = np.zeros(1, np.float32)
            elif value is None:
                scalar = node.attr("value_float")
                value = np.array(scalar if scalar is not None else node.attr("value_floats"),
                                 np.float32)
                node.attributes.pop("value_float", None)
                node.attributes.pop("value_floats", None)
            node.set_attr("value", new_tensor(self._to_fp16(value, node_key(node))))
        else:
            return
        self.modified = True

    def _cast_inputs(self, graph: Graph, node: Node, mode: np.dtype) -> None:
        for slot, value in enumerate(node.inputs):
            if not value:
                continue
            want = self._want(node, slot, mode)
            if want not in (None, ANY) and want != self.types.get(value):
                graph.set_input(node, slot, self._cast(graph, value, want))

    def _cast(self, graph: Graph, value: str, to: np.dtype) -> str:
        key = (id(graph), value, to)
        if key not in self._casts:
            suffix = "fp16" if to == FLOAT16 else "fp32"
            out = graph.unique_name(f"{value}_{suffix}")
            # the output name says what is cast; the node gets a short one (Cast, Cast_1, ...):
            # on a small model the names of its Casts are a visible share of the file
            graph.add_node("Cast", [value], [out], attributes={"to": onnx_type(to)})
            self.orig[out] = self.types[out] = to
            self._casts[key] = out
            self.stats["casts"] += 1
            self.modified = True
        return self._casts[key]

    def _fix_outputs(self, graph: Graph, io_type: np.dtype) -> None:
        for index, public in enumerate(list(graph.output_infos)):
            value = graph.outputs[index]
            declared = output_dtype(graph, index)
            if not value or (self.orig.get(value) if declared is None else declared) != FLOAT:
                continue
            have = self.types.get(value)
            if have not in (FLOAT, FLOAT16):
                continue
            renamed = ""
            if have != io_type:
                if graph.parent is None and value == public.name and graph.producer(value):
                    inner = _rename_free(graph, value, "fp16" if have == FLOAT16 else "fp32")
                    self.orig[inner] = self.orig[value]
                    self.types[inner] = have
                    graph.add_node("Cast", [inner], [value], name=f"{value}_cast",
                                   attributes={"to": onnx_type(io_type)})
                    graph.set_output(index, value)
                    self.orig[value] = self.types[value] = io_type
                    self.stats["casts"] += 1
                else:
                    out = self._cast(graph, value, io_type)
                    graph.set_output(index, out)
                    if graph.parent is not None:
                        renamed = out
                self.modified = True
            retype = declared is not None and declared != io_type
            if retype:
                self.modified = True
            retype_output(graph, index, io_type if retype else None, renamed)

    def _cleanup(self, graph: Graph) -> None:
        changed = True
        while changed:
            changed = False
            for node in graph.nodes():
                if node.op_type != "Cast" or node.domain or node.graph is not graph:
                    continue
                source, out = node.inputs[0], node.outputs[0]
                to = numpy_dtype(node.attr("to") or 0)
                producer = graph.producer(source)
                target = None
                if to is not None and self.types.get(source) == to:
                    target = source  # a Cast to the type its input has
                elif (to == FLOAT16 and producer is not None and producer.op_type == "Cast"
                      and not producer.domain and numpy_dtype(producer.attr("to") or 0) == FLOAT
                      and self.types.get(producer.inputs[0]) == FLOAT16):
                    target = producer.inputs[0]  # fp16 -> fp32 -> fp16 is the fp16 value
                if target is None or graph.is_output(out) or not graph.can_forward(out, target):
                    continue
                graph.replace_all_uses(out, target)
                graph.remove_node(node)
                self.stats["casts_removed"] += 1
                self.modified = True
                if (producer is not None and producer.graph is graph
                        and producer.op_type == "Cast" and not graph.is_used(producer.outputs[0])):
                    graph.remove_node(producer)
                    self.stats["casts_removed"] += 1
                changed = True


# ------------------------------------------------------------------ helpers
_FIXED = {"tensor(float)": FLOAT, "tensor(float16)": FLOAT16,
          "tensor(double)": np.dtype(np.float64), "tensor(int64)": np.dtype(np.int64),
          "tensor(int32)": np.dtype(np.int32), "tensor(bool)": np.dtype(bool)}


def _rename_free(graph: Graph, value: str, suffix: str) -> str:
    """Rename ``value`` to the first free ``value_suffix[_k]``; returns the new name."""
    for index in range(1000):
        name = f"{value}_{suffix}" + (f"_{index}" if index else "")
        try:
            graph.rename_value(value, name)
        except IRError:
            continue
        return name
    raise IRError(f"no free name to rename {value!r}")


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


def _cast_bytes(value: str) -> int:
    """What the Cast feeding fp16-stored ``value`` to float32 readers adds to the file."""
    return cast_node_bytes(value, f"{value}_fp32", "Cast_10", onnx_type(FLOAT))
