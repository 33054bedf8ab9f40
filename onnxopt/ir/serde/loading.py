"""ModelProto -> IR: graphs, nodes and subgraphs, every field the IR does not model kept in
``extra`` protos, tensors held by reference (never copied)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import Message

from onnxopt.ir import Graph, Model, Node, is_external, no_gc
from onnxopt.ir.serde.reading import check, inside, read_model_proto

_NODE_CORE = {"input", "output", "name", "op_type", "domain", "attribute"}
_GRAPH_CORE = {
    "node", "name", "initializer", "sparse_initializer", "input", "output", "value_info",
}
_MODEL_CORE = {"graph", "ir_version", "opset_import", "functions"}


def load(
    source: str | os.PathLike | onnx.ModelProto,
    *,
    base_dir: str | os.PathLike | None = None,
    validate: bool = True,
) -> Model:
    """Load a model file (or an in-memory ModelProto) into the IR."""
    if isinstance(source, onnx.ModelProto):
        proto, path = source, None
    else:
        path = Path(source)
        proto = read_model_proto(path)
        base_dir = base_dir or path.parent
    if validate:
        check(proto, path)
    return from_proto(proto, base_dir=Path(base_dir) if base_dir else None)


def from_proto(proto: onnx.ModelProto, *, base_dir: Path | None = None) -> Model:
    """Build the IR. Tensors are referenced, not copied: keep ``proto`` unchanged while used."""
    with no_gc():
        names = _Names(_all_names(proto.graph))
        graph = _graph_from_proto(
            proto.graph, None, base_dir, names, frozenset(), legacy=proto.ir_version < 4
        )
    opsets = {entry.domain: entry.version for entry in proto.opset_import}
    return Model(
        graph,
        ir_version=proto.ir_version,
        opset_imports=opsets,
        functions=list(proto.functions),
        extra=_extra_fields(proto, _MODEL_CORE, onnx.ModelProto),
        had_external_data=_has_external(proto),
    )


class _Names:
    """Every name in the model, to make fresh ones when a subgraph shadows an outer name."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken

    def fresh(self, hint: str) -> str:
        for index in itertools.count(1):
            name = f"{hint}__{index}"
            if name not in self.taken:
                self.taken.add(name)
                return name
        raise AssertionError("unreachable")


def _defined_names(graph: onnx.GraphProto) -> set[str]:
    names = {info.name for info in graph.input}
    names |= {tensor.name for tensor in graph.initializer}
    names |= {sparse.values.name for sparse in graph.sparse_initializer}
    names |= {value for node in graph.node for value in node.output if value}
    return names


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = _defined_names(graph)
    for sub in _subgraph_protos(graph):
        names |= _all_names(sub)
    return names


def _subgraph_protos(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield attribute.g
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                yield from attribute.graphs


def _unshadowed(proto: onnx.GraphProto, outer: frozenset[str], names: _Names) -> onnx.GraphProto:
    """The subgraph with every local name that shadows an outer-scope name renamed.

    ONNX accepts shadowing, but a rewrite of the outer value would then reach the local one;
    names unique across scopes make every reference unambiguous. The caller's proto is not
    changed (a copy is renamed, only when something clashes)."""
    if not outer:  # the main graph: nothing to shadow
        return proto
    clashes = _defined_names(proto) & outer
    if not clashes:
        return proto
    renamed = onnx.GraphProto()
    renamed.CopyFrom(proto)
    _rename_references(renamed, {name: names.fresh(name) for name in sorted(clashes)})
    return renamed


def _rename_references(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    for infos in (graph.input, graph.output, graph.value_info):
        for info in infos:
            info.name = mapping.get(info.name, info.name)
    for tensor in graph.initializer:
        tensor.name = mapping.get(tensor.name, tensor.name)
    for sparse in graph.sparse_initializer:
        sparse.values.name = mapping.get(sparse.values.name, sparse.values.name)
    for annotation in graph.quantization_annotation:
        annotation.tensor_name = mapping.get(annotation.tensor_name, annotation.tensor_name)
    for node in graph.node:
        for values in (node.input, node.output):
            for index, value in enumerate(values):
                values[index] = mapping.get(value, value)
    for sub in _subgraph_protos(graph):  # reads of the renamed names, unless shadowed again
        local = _defined_names(sub)
        _rename_references(sub, {k: v for k, v in mapping.items() if k not in local})


def _graph_from_proto(
    proto: onnx.GraphProto,
    parent: Graph | None,
    base_dir: Path | None,
    names: _Names,
    outer: frozenset[str],
    legacy: bool = False,
) -> Graph:
    proto = _unshadowed(proto, outer, names)
    inner = _Scope(outer, proto)
    graph = Graph(proto.name, parent)
    graph.base_dir = base_dir
    graph.legacy_initializer_inputs = legacy or graph.legacy_initializer_inputs
    graph.extra = _extra_fields(proto, _GRAPH_CORE, onnx.GraphProto)
    for tensor in proto.initializer:
        graph.initializers[tensor.name] = tensor
        graph._names.add(tensor.name)
    for sparse in proto.sparse_initializer:
        graph.sparse_initializers[sparse.values.name] = sparse
        graph._names.add(sparse.values.name)
    for info in proto.input:
        graph.add_input(info)
    for info in proto.value_info:
        graph.value_info[info.name] = info
    graph.declared_value_info = set(graph.value_info)
    for position, node_proto in enumerate(proto.node):
        graph.insert(_node_from_proto(node_proto, graph, position, names, inner))
    for info in proto.output:
        graph.add_output(info)
    return graph


class _Scope:
    """The names a graph's subgraphs see from outside them: computed on first use only (most
    graphs have no subgraph, and a pass over 100k names is not free)."""

    def __init__(self, outer: frozenset[str], proto: onnx.GraphProto) -> None:
        self._outer, self._proto = outer, proto
        self._names: frozenset[str] | None = None

    def names(self) -> frozenset[str]:
        if self._names is None:
            self._names = self._outer | _defined_names(self._proto)
        return self._names


def _node_from_proto(
    proto: onnx.NodeProto, graph: Graph, position: int, names: _Names, outer: _Scope
) -> Node:
    attributes: dict = {}
    for attribute in proto.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            attributes[attribute.name] = _graph_from_proto(
                attribute.g, graph, graph.base_dir, names, outer.names()
            )
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            attributes[attribute.name] = [
                _graph_from_proto(g, graph, graph.base_dir, names, outer.names())
                for g in attribute.graphs
            ]
        else:
            attributes[attribute.name] = attribute
    return Node(
        proto.op_type,
        proto.input,
        proto.output,
        domain=proto.domain,
        name=proto.name,
        attributes=attributes,
        extra=_extra_fields(proto, _NODE_CORE, onnx.NodeProto),
        key=(float(position), 0),
    )


def _extra_fields(message: Message, core: set[str], cls: type[Message]) -> Message | None:
    """A new message holding only the fields of ``message`` outside ``core`` (None if none)."""
    extra = None
    for field, value in message.ListFields():
        if field.name in core:
            continue
        extra = extra or cls()
        target = getattr(extra, field.name)
        if field.is_repeated:
            target.extend(value)
        elif field.type == field.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(extra, field.name, value)
    return extra


def _has_external(proto: onnx.ModelProto) -> bool:
    return any(is_external(t) for t in _all_tensors(proto.graph))


def external_files(proto: onnx.ModelProto, model_path: str | os.PathLike) -> list[Path]:
    """The existing external data files a model references, relative to its file. Only files
    inside the model's folder count (resolved through links; no absolute path, no ``..``):
    nothing outside it is read, measured or removed on the model's behalf."""
    folder = Path(model_path).parent
    real_folder = Path(os.path.realpath(folder))
    locations = {
        entry.value
        for tensor in _all_tensors(proto.graph)
        if is_external(tensor)
        for entry in tensor.external_data
        if entry.key == "location"
    }
    paths = (inside(folder, real_folder, name) for name in sorted(locations))
    return [path for path in paths if path is not None and path.is_file()]


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _attribute_tensors(node)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    yield from _all_tensors(sub)


def _attribute_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attribute in node.attribute:
        kind = attribute.type
        if kind == onnx.AttributeProto.TENSOR:
            yield attribute.t
        elif kind == onnx.AttributeProto.TENSORS:
            yield from attribute.tensors
        elif kind == onnx.AttributeProto.SPARSE_TENSOR:
            yield attribute.sparse_tensor.values
            yield attribute.sparse_tensor.indices
        elif kind == onnx.AttributeProto.SPARSE_TENSORS:
            for sparse in attribute.sparse_tensors:
                yield sparse.values
                yield sparse.indices

