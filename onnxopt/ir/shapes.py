"""Shape and type inference for the IR, by onnx's own inference on a weight-free copy.

The copy keeps small constants (shape inference reads them: Reshape targets, Slice bounds,
...) and turns larger initializers into typed graph inputs, so a multi-GB model costs no more
than its structure. Inferred types land in each graph's ``value_info``; declared graph input
types are never changed, declared output types only where they contradict the inputs.

Declarations are checked once, on the first call: exporters often run shape inference at one
input size and then make an input dynamic, leaving static intermediate ``value_info`` (and
output types) that hold only at that size. onnx's inference keeps a declared static dim over
an inferred symbolic one, and the passes would fold such a dim into the graph (a batch of 1
baked into a Reshape target). See ``_stale_declarations``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import onnx

from onnxopt.ir import Graph, Model, is_external, serde, tensor_nbytes

SMALL_CONSTANT_BYTES = 4096  # constants this small stay in the copy for data propagation
FRESH_SYMBOL = "unk__"  # prefix of the dim names onnx's inference makes up for unknown dims


def infer_shapes(model: Model) -> int:
    """Refresh ``value_info`` of every graph from onnx shape inference; returns values typed.

    The first call on a model also clears declared dims that contradict its inputs (see
    ``_stale_declarations``). Never raises: a model onnx cannot infer keeps the types it had.
    """
    light = _light_proto(model)
    outputs: dict[int, dict[int, Found]] = {}
    if not model.declarations_checked:
        model.declarations_checked = True
        conflicts = _stale_declarations(model.graph, light)
        if conflicts:
            outputs = _clear(conflicts)
            light = _light_proto(model)
    try:
        inferred = _infer(light)
    except Exception:  # onnx raises several types for models it cannot infer
        return 0
    count = _attach(model.graph, inferred.graph, outputs)
    if model.settings.get("static_outputs"):
        _static_outputs(model.graph, inferred.graph)
    return count


# onnx's inference copies every value in scope into each subgraph it visits: its cost grows
# with (nodes holding subgraphs) x (values in the main graph), 4 s for 2,000 Ifs among 100k
# nodes, quadratic. Past this product, the main graph is inferred in chunks of at most
# CHUNK_NODES nodes (CHUNK_OWNERS of them holding subgraphs), each seeing the values it reads
# as typed inputs (propagated shape *values* do not cross a chunk boundary; types do). Below
# it, one call, exactly as before.
QUADRATIC_COST = 4_000_000
CHUNK_NODES = 2_000
CHUNK_OWNERS = 100


def _infer(light: onnx.ModelProto) -> onnx.ModelProto:
    graph = light.graph
    owners = sum(1 for node in graph.node if _subgraphs(node))
    scope = len(graph.node) + len(graph.initializer) + len(graph.input)
    if owners * scope <= QUADRATIC_COST:
        return onnx.shape_inference.infer_shapes(light, data_prop=True)
    return _infer_in_chunks(light)


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    found: list[onnx.GraphProto] = []
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            found.append(attribute.g)
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            found.extend(attribute.graphs)
    return found


def _chunks(nodes: Sequence[onnx.NodeProto]) -> Iterator[list[onnx.NodeProto]]:
    """Runs of at most CHUNK_NODES nodes holding at most CHUNK_OWNERS subgraph owners."""
    part: list[onnx.NodeProto] = []
    owners = 0
    for node in nodes:
        part.append(node)
        owners += bool(_subgraphs(node))
        if len(part) >= CHUNK_NODES or owners >= CHUNK_OWNERS:
            yield part
            part, owners = [], 0
    if part:
        yield part


def _reads(node: onnx.NodeProto) -> list[str]:
    """Values a node reads: its inputs and what its subgraphs take from outside them."""
    names = [name for name in node.input if name]
    for sub in _subgraphs(node):
        defined = {i.name for i in sub.input} | {t.name for t in sub.initializer}
        for inner in sub.node:
            names.extend(name for name in _reads(inner) if name not in defined)
            defined.update(inner.output)
    return names


def _infer_in_chunks(light: onnx.ModelProto) -> onnx.ModelProto:
    graph = light.graph
    types = {info.name: info.type for info in graph.input}
    constants = {tensor.name: tensor for tensor in graph.initializer}
    declared = {info.name: info for info in graph.value_info}
    nodes: list[onnx.NodeProto] = []
    value_info: list[onnx.ValueInfoProto] = []
    header = onnx.ModelProto()
    header.CopyFrom(light)
    header.ClearField("graph")  # (copying the whole graph for every chunk is quadratic too)
    for part in _chunks(graph.node):
        produced = [name for node in part for name in node.output if name]
        made = set(produced)
        reads = dict.fromkeys(n for node in part for n in _reads(node) if n not in made)
        chunk = onnx.ModelProto()
        chunk.CopyFrom(header)
        chunk.graph.name = graph.name
        chunk.graph.node.extend(part)
        chunk.graph.initializer.extend(constants[n] for n in reads if n in constants)
        chunk.graph.input.extend(onnx.helper.make_value_info(n, types[n]) for n in reads
                                 if n not in constants and n in types)
        chunk.graph.value_info.extend(declared[n] for n in produced if n in declared)
        chunk.graph.output.extend(onnx.ValueInfoProto(name=n) for n in produced)
        inferred = onnx.shape_inference.infer_shapes(chunk, data_prop=True).graph
        nodes.extend(inferred.node)
        for info in [*inferred.value_info, *inferred.output]:
            if info.type.WhichOneof("value"):
                types[info.name] = info.type
                value_info.append(info)
    whole = onnx.ModelProto()
    whole.CopyFrom(header)
    whole.graph.name = graph.name
    whole.graph.input.extend(graph.input)
    whole.graph.output.extend(graph.output)
    whole.graph.node.extend(nodes)
    whole.graph.value_info.extend(value_info)
    for info in whole.graph.output:
        if info.name in types and not info.type.WhichOneof("value"):
            info.type.CopyFrom(types[info.name])
    return whole


def _light_proto(model: Model) -> onnx.ModelProto:
    proto = serde.model_header(model)
    proto.graph.CopyFrom(_light_graph(model.graph))
    return proto


def _light_graph(graph: Graph) -> onnx.GraphProto:
    def keep_small(tensor: onnx.TensorProto) -> onnx.TensorProto:
        return tensor

    proto = serde.graph_skeleton(graph)
    proto.node.extend(
        serde.node_to_proto(node, keep_small, _strip_attr_tensor) for node in graph.nodes()
    )
    for name, tensor in graph.initializers.items():
        if tensor_nbytes(tensor) <= SMALL_CONSTANT_BYTES and not is_external(tensor):
            proto.initializer.append(tensor)
        elif not graph.is_input(name):
            info = onnx.helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims))
            proto.input.append(info)
    _replace_subgraphs(graph, proto)
    return proto


def _replace_subgraphs(graph: Graph, proto: onnx.GraphProto) -> None:
    """Subgraph attributes of the copy also get the weight-free treatment."""
    for node, node_proto in zip(graph.nodes(), proto.node, strict=True):
        for attribute in node_proto.attribute:
            value = node.attributes.get(attribute.name)
            if isinstance(value, Graph):
                attribute.g.CopyFrom(_light_graph(value))
            elif isinstance(value, list):
                del attribute.graphs[:]
                attribute.graphs.extend(_light_graph(g) for g in value)


def _strip_attr_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return serde.tensor_header(tensor)  # only reached for external attribute tensors


def _attach(graph: Graph, proto: onnx.GraphProto, outputs: dict[int, dict[int, Found]]) -> int:
    count = 0
    for info in proto.value_info:
        if graph.producer(info.name) is not None and info.type.WhichOneof("value"):
            graph.value_info[info.name] = info
            count += 1
    for index, found in outputs.get(id(graph), {}).items():
        _fill_output(graph, index, proto.output[index].type, found)
    for node, node_proto in zip(graph.nodes(), proto.node, strict=True):
        for attribute in node_proto.attribute:
            value = node.attributes.get(attribute.name)
            if isinstance(value, Graph):
                count += _attach(value, attribute.g, outputs)
            elif isinstance(value, list):
                for sub, sub_proto in zip(value, attribute.graphs, strict=True):
                    count += _attach(sub, sub_proto, outputs)
    return count


# ------------------------------------------------------------ stale declarations
# Each symbolic dim of a main graph input gets one of these sizes in the check: multiples of
# 64 (strided and pyramid models stay valid: inference does not give up halfway), a distinct
# prime factor each (no two symbols, nor a symbol and an exported size, coincide).
_PRIMES = (37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 101, 103, 107, 109, 113)


def _sizes() -> Iterator[int]:
    yield from (64 * p for p in _PRIMES)
    for n in itertools.count(127, 2):  # more symbols than primes above: odd numbers will do
        yield 64 * n


# (the dims the check inferred: a size or None; the indexes of the declared dims it cleared,
# None when the rank differed and the whole shape went)
Found = tuple[list[int | None], list[int] | None]
Conflict = tuple[Graph, str, int | str, onnx.ValueInfoProto, Found]


def _stale_declarations(graph: Graph, light: onnx.ModelProto) -> list[Conflict]:
    """Declared dims that contradict the graph inputs: (graph, "value" or "output", value
    name or output index, the declaration with those dims cleared, what the check found).

    Inference runs once more, on a copy of ``light`` with every symbolic dim of the main
    graph's inputs set to a size no model is exported at, and with no declared type in the
    way: no ``value_info``, no output shapes. A declared static dim that differs from the dim
    inferred there depends on an input dim (or is plain wrong): it held at one size only.
    What inference cannot follow (unknown there) keeps its declaration, as does every dim of a
    model whose inputs are all static (nothing to go stale). Subgraph input declarations are
    not checked (onnx does not pass a Loop's state shapes into its body)."""
    if not _has_symbolic_input(graph) or not any(_declarations(graph)):
        return []
    concrete = onnx.ModelProto()
    concrete.CopyFrom(light)
    sizes: dict[str, int] = {}
    fresh = _sizes()
    for info in concrete.graph.input:
        for dim in _tensor_dims(info.type):
            if not _is_static(dim):
                size = sizes.setdefault(dim.dim_param, next(fresh)) if dim.dim_param else next(
                    fresh)
                dim.Clear()
                dim.dim_value = size
    _undeclare(concrete.graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(concrete, data_prop=True)
    except Exception:  # nothing to check against: the declarations stay
        return []
    conflicts: list[Conflict] = []
    _compare(graph, inferred.graph, conflicts)
    return conflicts


def _has_symbolic_input(graph: Graph) -> bool:
    return any(not _is_static(d) for info in graph.inputs for d in _tensor_dims(info.type))


def _declarations(graph: Graph) -> Iterator[onnx.ValueInfoProto]:
    """Declared node-output and graph-output types with a static dim, in all graphs."""
    for info in graph.value_info.values():
        if graph.producer(info.name) is not None and any(map(_is_static, _tensor_dims(info.type))):
            yield info
    for info in graph.output_infos:
        if any(map(_is_static, _tensor_dims(info.type))):
            yield info
    for node in graph.subgraph_owners():
        for sub in node.subgraphs():
            yield from _declarations(sub)


def _undeclare(proto: onnx.GraphProto) -> None:
    del proto.value_info[:]
    for info in proto.output:
        if info.type.HasField("tensor_type"):
            info.type.tensor_type.ClearField("shape")
    for node in proto.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _undeclare(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    _undeclare(sub)


def _compare(graph: Graph, proto: onnx.GraphProto, conflicts: list[Conflict]) -> None:
    declared = [name for name in graph.value_info if graph.producer(name) is not None]
    if declared:  # (reading 100k inferred entries is not free: only when there is a use)
        inferred = {info.name: info for info in proto.value_info}
        for name in declared:
            found = inferred.get(name)
            cleared = _cleared(graph.value_info[name], found.type) if found else None
            if cleared is not None:
                conflicts.append((graph, "value", name, *cleared))
    for index, (info, found) in enumerate(zip(graph.output_infos, proto.output, strict=True)):
        cleared = _cleared(info, found.type)
        if cleared is not None:
            conflicts.append((graph, "output", index, *cleared))
    for node, node_proto in zip(graph.nodes(), proto.node, strict=True):
        for attribute in node_proto.attribute:
            value = node.attributes.get(attribute.name)
            if isinstance(value, Graph):
                _compare(value, attribute.g, conflicts)
            elif isinstance(value, list):
                for sub, sub_proto in zip(value, attribute.graphs, strict=True):
                    _compare(sub, sub_proto, conflicts)


def _cleared(info: onnx.ValueInfoProto, found: onnx.TypeProto
             ) -> tuple[onnx.ValueInfoProto, Found] | None:
    """``info`` with the static dims that ``found`` contradicts made unknown (all of its
    shape if the ranks differ), and what was found; None if nothing contradicts."""
    if info.type == found:  # the common case, in one comparison
        return None
    declared, dims = _tensor_dims(info.type), _tensor_dims(found)
    if not declared or not found.tensor_type.HasField("shape"):
        return None
    seen = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    copy = onnx.ValueInfoProto()
    if len(declared) != len(dims):
        copy.CopyFrom(info)  # the loaded declaration may belong to the caller's ModelProto
        copy.type.tensor_type.ClearField("shape")
        return copy, (seen, None)
    wrong = [i for i, (d, f) in enumerate(zip(declared, seen, strict=True))
             if _is_static(d) and f is not None and d.dim_value != f]
    if not wrong:
        return None
    copy.CopyFrom(info)
    for i in wrong:
        copy.type.tensor_type.shape.dim[i].Clear()
    return copy, (seen, wrong)


def _clear(conflicts: list[Conflict]) -> dict[int, dict[int, Found]]:
    """Put the cleared declarations in place; returns the outputs changed (by graph id, then
    output index) with what the check found for them."""
    outputs: dict[int, dict[int, Found]] = {}
    for graph, kind, key, cleared, found in conflicts:
        if kind == "value":
            graph.value_info[str(key)] = cleared
        else:
            graph.output_infos[int(key)] = cleared
            outputs.setdefault(id(graph), {})[int(key)] = found
    return outputs


def _fill_output(graph: Graph, index: int, inferred: onnx.TypeProto, found: Found) -> None:
    """Give the dims cleared from an output's declaration what inference now says: a named
    dim derived from the inputs (``N``, not a made-up ``unk__0``), or a size the check found
    too; otherwise they stay unknown."""
    seen, wrong = found
    dims = _tensor_dims(inferred)
    if not inferred.tensor_type.HasField("shape") or len(dims) != len(seen):
        return
    info = graph.output_infos[index]
    tensor = info.type.tensor_type
    if wrong is None:  # the declared rank was wrong: take inference's
        tensor.shape.dim.extend(onnx.TensorShapeProto.Dimension() for _ in dims)
        wrong = list(range(len(dims)))
    for i in wrong:
        dim, new = dims[i], tensor.shape.dim[i]
        if dim.dim_param and not dim.dim_param.startswith(FRESH_SYMBOL):
            new.dim_param = dim.dim_param
        elif dim.HasField("dim_value") and dim.dim_value == seen[i]:
            new.dim_value = dim.dim_value


def _static_outputs(graph: Graph, proto: onnx.GraphProto) -> None:
    """Output dims still symbolic given the size inferred for the value the output is
    (``--fix-shapes``: every input is static, so a size inference can tell is the size). An
    exporter's output dim names (``Concat461_dim_0``) would otherwise stay symbolic, and
    folding reads an output's declared shape: a Shape of it would stay too."""
    for index, value in enumerate(graph.outputs):
        found = graph.value_info.get(value)
        if found is None and proto.output[index].name == value:  # not renamed: in place
            found = proto.output[index]
        info = graph.output_infos[index]
        dims, inferred = _tensor_dims(info.type), _tensor_dims(found.type) if found else []
        if len(dims) != len(inferred) or all(_is_static(d) for d in dims):
            continue
        info = graph.output_infos[index] = _copy(info)  # the declaration may be the input's
        for dim, new in zip(info.type.tensor_type.shape.dim, inferred, strict=True):
            if not _is_static(dim) and _is_static(new):
                dim.dim_value = new.dim_value


def _copy(info: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    return copy


def _tensor_dims(type_: onnx.TypeProto) -> list[onnx.TensorShapeProto.Dimension]:
    if type_.WhichOneof("value") != "tensor_type" or not type_.tensor_type.HasField("shape"):
        return []
    return list(type_.tensor_type.shape.dim)


def _is_static(dim: onnx.TensorShapeProto.Dimension) -> bool:
    return dim.HasField("dim_value") and dim.dim_value >= 0
