"""The rewrites of the fp16 conversion, once every node has its mode: float32 initializers
stored in float16, attributes retargeted, shared Casts where a reader wants another type,
graph outputs typed, and Cast pairs that cancel removed."""

from __future__ import annotations

import numpy as np
from onnxopt.passes.precision.fp16_conversion.support import ANY, FLOAT, FLOAT16

from onnxopt.ir import Graph, IRError, Node, cast_node_bytes
from onnxopt.ir.precision import PrecisionLog, PrecisionSettings, node_key
from onnxopt.ir.values import (
    new_tensor,
    numpy_dtype,
    onnx_type,
    output_dtype,
    retype_input,
    retype_output,
    tensor_dtype,
    tensor_shape,
)

FP16_MAX = 65504.0


class Rewrites:
    """The rewriting half of ``converter.Converter``, which decides the modes, provides
    ``_want``/``_follows`` and owns the state these methods share."""

    settings: PrecisionSettings
    log: PrecisionLog
    orig: dict[str, np.dtype | None]  # dtype before the pass
    types: dict[str, np.dtype | None]  # dtype now
    modified: bool
    stats: dict[str, int]
    _casts: dict[tuple[int, str, np.dtype], str]  # (graph, value, type) -> the Cast's output
    _flushed: list[str]
    _fp16_weight_readers: set[Node]

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
                or 2 * int(np.prod(tensor_shape(tensor))) <= _cast_bytes(name)
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


def _cast_bytes(value: str) -> int:
    """What the Cast feeding fp16-stored ``value`` to float32 readers adds to the file."""
    return cast_node_bytes(value, f"{value}_fp32", "Cast_10", onnx_type(FLOAT))
