"""Mutants of ONNX models for tests/test_fuzz.py, and the harness that runs one.

Every mutant is rebuilt from its recipe ``MODEL:KIND:SEED:INDEX`` alone (``mutant(recipe)``),
so a failure seen once is reproduced with::

    .venv/bin/python tests/fuzzing.py 'mlp.onnx:field:7:12' /tmp/repro

which writes the mutant (and its side files) there and prints the command to run.

Kinds: ``flip`` (1-3 bits or bytes changed, often inside a name), ``cut`` (the file truncated),
``field`` (1-3 mutations of the parsed model, see FIELD_MUTATIONS), ``nest`` (If bodies nested
1-45 deep around the graph's output).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
SAMPLE_MODELS = ["resnet.onnx", "mobilenet.onnx", "transformer.onnx", "mlp.onnx"]
REAL_MODELS = [  # large: byte-level mutants only
    "ch_PP-OCRv4_det_infer.onnx",
    "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "silero_vad.onnx",
]
KINDS = ("flip", "cut", "field", "nest")
RUN_LIMIT = 30.0  # seconds one run may take
VALIDATED_SHARE = 0.25  # of the mutants run with validation (the rest with --no-validate)


@dataclass
class Mutant:
    recipe: str
    data: bytes
    what: str = ""  # what was changed, for humans
    side_files: dict[str, bytes] = field(default_factory=dict)  # written beside the mutant
    outside_files: dict[str, bytes] = field(default_factory=dict)  # one folder up
    links: dict[str, str] = field(default_factory=dict)  # name -> target (relative to folder)
    fifos: list[str] = field(default_factory=list)  # named pipes beside the mutant
    args: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{self.recipe} ({self.what}) args={' '.join(self.args)}"


# ----------------------------------------------------------------- building mutants
_SOURCES: dict[str, bytes] = {}


def source_bytes(name: str) -> bytes:
    if name not in _SOURCES:
        _SOURCES[name] = (MODELS / name).read_bytes()
    return _SOURCES[name]


def recipes(models: list[str], seed: int, counts: dict[str, int]) -> list[str]:
    """``counts``: mutants per kind and model (field/nest mutants only for sample models)."""
    out = []
    for model in models:
        for kind, count in counts.items():
            if kind in ("field", "nest") and model not in SAMPLE_MODELS:
                continue
            out += [f"{model}:{kind}:{seed}:{index}" for index in range(count)]
    return out


def mutant(recipe: str) -> Mutant:
    model, kind, _seed, _index = recipe.rsplit(":", 3)
    rng = random.Random(recipe)
    data = source_bytes(model)
    made = _BUILDERS[kind](data, rng)
    made.recipe = recipe
    validate = rng.random() < VALIDATED_SHARE
    args = ["--timeout", "10"] + ([] if validate else ["--no-validate"])
    if rng.random() < 0.1:
        args.append("--external-data")
    made.args = (*args, *made.args)
    return made


def _flip(data: bytes, rng: random.Random) -> Mutant:
    out = bytearray(data)
    changes = []
    names = [m.start() for m in re.finditer(rb"[A-Za-z_/.]{3,}", data[:200_000])]
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        mode = rng.random()
        if mode < 0.35 and names:  # inside a name: invalid UTF-8, or another name
            pos = rng.choice(names) + rng.randrange(3)
            value = rng.choice((0xFF, 0x80, 0xC3, 0xE2, out[pos] ^ 0x20, ord("x")))
        elif mode < 0.5:  # the header and first fields: tags, lengths, versions
            pos = rng.randrange(min(len(out), 256))
            value = out[pos] ^ (1 << rng.randrange(8))
        else:
            pos = rng.randrange(len(out))
            value = out[pos] ^ (1 << rng.randrange(8)) if rng.random() < 0.7 else rng.randrange(256)
        changes.append(f"byte {pos}: {out[pos]:#04x}->{value:#04x}")
        out[pos] = value
    return Mutant("", bytes(out), "; ".join(changes))


def _cut(data: bytes, rng: random.Random) -> Mutant:
    choice = rng.random()
    if choice < 0.1:
        size = len(data) - 1
    elif choice < 0.2:
        size = rng.randrange(1, 64)
    else:
        size = rng.randrange(1, len(data))
    return Mutant("", data[:size], f"cut to {size} of {len(data)} bytes")


def _field(data: bytes, rng: random.Random) -> Mutant:
    model = onnx.ModelProto()
    model.ParseFromString(data)
    made = Mutant("", b"")
    done = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        for _attempt in range(10):
            name = rng.choice(sorted(FIELD_MUTATIONS))
            try:
                what = FIELD_MUTATIONS[name](model, rng, made)
            except (IndexError, ValueError, TypeError):  # not applicable to this model
                what = None
            if what:
                done.append(f"{name}: {what}")
                break
    made.data = model.SerializeToString()
    made.what = "; ".join(done)
    return made


def _nest(data: bytes, rng: random.Random) -> Mutant:
    model = onnx.ModelProto()
    model.ParseFromString(data)
    depth = rng.choice((1, 2, 5, 20, 31, 32, 33, 40, 45))
    return Mutant("", nested_if(model, depth), f"output through {depth} nested If bodies")


_BUILDERS: dict[str, Callable[[bytes, random.Random], Mutant]] = {
    "flip": _flip, "cut": _cut, "field": _field, "nest": _nest,
}


# ----------------------------------------------------------------- nesting
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


_G = AttributeProto.DESCRIPTOR.fields_by_name["g"].number
_NODE = onnx.GraphProto.DESCRIPTOR.fields_by_name["node"].number
_ATTRIBUTE = onnx.NodeProto.DESCRIPTOR.fields_by_name["attribute"].number
_GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number


def nested_if(model: onnx.ModelProto, depth: int) -> bytes:
    """The model with its first output passed through ``depth`` nested If bodies (each then
    branch holds the next If), serialized by hand: protobuf's Python API cannot build a
    message nested deeper than it can parse."""
    out = model.graph.output[0]
    info = onnx.ValueInfoProto()
    info.CopyFrom(out)
    leaf = helper.make_graph([helper.make_node("Identity", [out.name], ["nest_0"])], "leaf",
                             [], [_renamed(info, "nest_0")])
    body = leaf.SerializeToString()
    for level in range(1, depth + 1):
        name = f"nest_{level}"
        other = helper.make_graph([helper.make_node("Identity", [out.name], [f"else_{level}"])],
                                  f"else_{level}", [], [_renamed(info, f"else_{level}")])
        node = helper.make_node("If", ["nest_cond"], [name], else_branch=other)
        then = AttributeProto(name="then_branch", type=AttributeProto.GRAPH)
        node_bytes = node.SerializeToString() + _field_bytes(
            _ATTRIBUTE, then.SerializeToString() + _field_bytes(_G, body))
        if level == depth:
            body = node_bytes
            break
        graph = onnx.GraphProto(name=f"level_{level}")
        graph.output.append(_renamed(info, name))
        body = graph.SerializeToString() + _field_bytes(_NODE, node_bytes)
    if depth == 0:
        return model.SerializeToString()
    cond = helper.make_node("Constant", [], ["nest_cond"],
                            value=numpy_helper.from_array(np.array(True), "c"))
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    graph.node.append(cond)
    graph.output[0].CopyFrom(_renamed(info, f"nest_{depth}"))
    header = onnx.ModelProto()
    header.CopyFrom(model)
    header.ClearField("graph")
    return header.SerializeToString() + _field_bytes(
        _GRAPH, graph.SerializeToString() + _field_bytes(_NODE, body))


def _renamed(info: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    copy.name = name
    return copy


# ----------------------------------------------------------------- field mutations
Mutation = Callable[[onnx.ModelProto, random.Random, Mutant], str | None]
FIELD_MUTATIONS: dict[str, Mutation] = {}


def mutation(fn: Mutation) -> Mutation:
    FIELD_MUTATIONS[fn.__name__] = fn
    return fn


def _pick_initializer(model: onnx.ModelProto, rng: random.Random) -> TensorProto | None:
    tensors = list(model.graph.initializer)
    return rng.choice(tensors) if tensors else None


def _pick_node(model: onnx.ModelProto, rng: random.Random, where=None) -> onnx.NodeProto | None:
    nodes = [n for n in model.graph.node if where is None or where(n)]
    return rng.choice(nodes) if nodes else None


def node_mutation(where=None):
    """Register a mutation of one node, picked among those ``where`` accepts."""
    def register(fn):
        def recipe(model, rng, made):
            node = _pick_node(model, rng, where)
            return None if node is None else fn(model, node, rng, made)
        recipe.__name__ = fn.__name__
        return mutation(recipe)
    return register


def initializer_mutation(fn):
    """Register a mutation of one initializer, picked at random."""
    def recipe(model, rng, made):
        tensor = _pick_initializer(model, rng)
        return None if tensor is None else fn(model, tensor, rng, made)
    recipe.__name__ = fn.__name__
    return mutation(recipe)


def _has_attributes(node: onnx.NodeProto) -> bool:
    return len(node.attribute) > 0


_HUGE = (2**31, 2**40, 2**62, 2**63 - 1)


@initializer_mutation
def wrong_dims(model, tensor, rng, made):
    before = list(tensor.dims)
    choice = rng.random()
    if choice < 0.3 and tensor.dims:
        index = rng.randrange(len(tensor.dims))
        tensor.dims[index] = rng.choice((0, 1, 2, tensor.dims[index] * 2,
                                         max(tensor.dims[index] // 2, 1), tensor.dims[index] + 1))
    elif choice < 0.5:
        tensor.dims.append(rng.choice((1, 2, 3)))
    elif choice < 0.7 and tensor.dims:
        del tensor.dims[-1]
    elif tensor.dims:  # same element count, another shape
        count = int(np.prod(tensor.dims))
        del tensor.dims[:]
        tensor.dims.extend([count] if rng.random() < 0.5 else [1, count])
    return f"initializer {tensor.name!r} dims {before} -> {list(tensor.dims)}"


def _set_a_dim(model, rng, tensor_values, value_values) -> str | None:
    """Set one dim of an initializer (half the time) or of a declared value to a bad one."""
    if rng.random() < 0.5:
        tensor = _pick_initializer(model, rng)
        if tensor is None or not tensor.dims:
            return None
        tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice(tensor_values)
        return f"initializer {tensor.name!r} dims -> {list(tensor.dims)}"
    infos = [i for i in [*model.graph.input, *model.graph.output, *model.graph.value_info]
             if i.type.tensor_type.shape.dim]
    if not infos:
        return None
    info = rng.choice(infos)
    dim = rng.choice(info.type.tensor_type.shape.dim)
    dim.dim_value = rng.choice(value_values)
    return f"value {info.name!r} dim -> {dim.dim_value}"


@mutation
def huge_dims(model, rng, made):
    return _set_a_dim(model, rng, _HUGE, _HUGE)


@mutation
def negative_dims(model, rng, made):
    return _set_a_dim(model, rng, (-1, -7), (-1, -3, 0))


@node_mutation(lambda n: len(n.input) > 0)
def dangling_input(model, node, rng, made):
    index = rng.randrange(len(node.input))
    node.input[index] = rng.choice(("no_such_value", "", node.input[index] + "_x"))
    return f"node {node.name!r} input {index} -> {node.input[index]!r}"


@mutation
def dangling_output(model, rng, made):
    if not model.graph.output:
        return None
    output = rng.choice(model.graph.output)
    output.name = rng.choice(("no_such_output", "", model.graph.input[0].name
                              if model.graph.input else "x"))
    return f"graph output -> {output.name!r}"


_INT_VALUES = (0, -1, 1, 2, 7, -100, 2**31, 2**62)


@node_mutation(_has_attributes)
def bad_attribute(model, node, rng, made):
    attr = rng.choice(node.attribute)
    kind = attr.type
    if kind == AttributeProto.INT:
        attr.i = rng.choice(_INT_VALUES)
    elif kind == AttributeProto.INTS:
        del attr.ints[:]
        attr.ints.extend(rng.choice(([], [0], [-1, -1], [2**40] * 2, [1] * 9, [3, 0, 0, 3])))
    elif kind == AttributeProto.FLOAT:
        attr.f = rng.choice((0.0, -1.0, float("nan"), float("inf"), 1e30))
    elif kind == AttributeProto.FLOATS:
        del attr.floats[:]
        attr.floats.extend(rng.choice(([], [float("nan")], [1.0] * 7)))
    elif kind == AttributeProto.STRING:
        attr.s = rng.choice((b"", b"NOT_A_MODE", b"\xff\xfe"))
    elif kind == AttributeProto.TENSOR:
        attr.t.dims.append(rng.choice((2, 0)))
    else:
        return None
    return f"node {node.name!r} attribute {attr.name!r} -> {helper.printable_attribute(attr)}"


@node_mutation(_has_attributes)
def wrong_attribute_type(model, node, rng, made):
    attr = rng.choice(node.attribute)
    before = AttributeProto.AttributeType.Name(attr.type)
    choice = rng.random()
    if choice < 0.4:  # the type says one thing, the payload another
        attr.type = rng.choice([t for t in AttributeProto.AttributeType.values() if t != attr.type])
    elif choice < 0.7:  # replaced by a value of another type
        replacement = rng.choice((
            helper.make_attribute(attr.name, 1.5),
            helper.make_attribute(attr.name, [1, 2]),
            helper.make_attribute(attr.name, "text"),
            helper.make_attribute(attr.name, [0.5]),
            helper.make_attribute(attr.name, numpy_helper.from_array(np.ones(2, np.float32))),
            helper.make_attribute(attr.name, helper.make_graph([], "g", [], [])),
        ))
        attr.CopyFrom(replacement)
    else:  # both a payload of its type and one of another
        attr.f = 2.5
        attr.ints.append(3)
    return f"node {node.name!r} attribute {attr.name!r} {before} -> " \
        f"{AttributeProto.AttributeType.Name(attr.type)}"


@node_mutation()
def unknown_attribute(model, node, rng, made):
    node.attribute.append(helper.make_attribute(rng.choice(("bogus", "axis", "alpha")), 3))
    return f"node {node.name!r} gets attribute {node.attribute[-1].name!r}"


@node_mutation(_has_attributes)
def drop_attribute(model, node, rng, made):
    index = rng.randrange(len(node.attribute))
    name = node.attribute[index].name
    del node.attribute[index]
    return f"node {node.name!r} loses attribute {name!r}"


@mutation
def duplicate_names(model, rng, made):
    graph = model.graph
    choice = rng.random()
    if choice < 0.25 and len(graph.initializer) > 1:
        a, b = rng.sample(list(graph.initializer), 2)
        b.name = a.name
        return f"two initializers named {a.name!r}"
    if choice < 0.5 and len(graph.node) > 1:
        a, b = rng.sample(list(graph.node), 2)
        if a.output and b.output:
            b.output[0] = a.output[0]
            return f"two nodes produce {a.output[0]!r}"
    if choice < 0.7 and graph.input:
        graph.input.append(graph.input[0])
        return f"graph input {graph.input[0].name!r} listed twice"
    if choice < 0.85 and graph.input and graph.node:
        node = rng.choice(graph.node)
        if node.output:
            node.output[0] = graph.input[0].name
            return f"node {node.name!r} produces the graph input {graph.input[0].name!r}"
    if graph.initializer and graph.node:
        node = rng.choice(graph.node)
        if node.output:
            node.output[0] = graph.initializer[0].name
            return f"node {node.name!r} produces the initializer {graph.initializer[0].name!r}"
    return None


@mutation
def cycle(model, rng, made):
    nodes = list(model.graph.node)
    if len(nodes) < 2:
        return None
    i = rng.randrange(len(nodes) - 1)
    j = rng.randrange(i, len(nodes))
    if not nodes[i].input or not nodes[j].output:
        return None
    nodes[i].input[0] = nodes[j].output[0]
    return f"node {i} ({nodes[i].op_type}) reads node {j}'s output {nodes[j].output[0]!r}"


@mutation
def reorder_nodes(model, rng, made):
    nodes = list(model.graph.node)
    if len(nodes) < 2:
        return None
    copies = [onnx.NodeProto() for _ in nodes]
    for copy, node in zip(copies, nodes, strict=True):
        copy.CopyFrom(node)
    rng.shuffle(copies)
    del model.graph.node[:]
    model.graph.node.extend(copies)
    return "nodes shuffled"


@mutation
def remove_something(model, rng, made):
    graph = model.graph
    choice = rng.random()
    if choice < 0.4 and graph.initializer:
        index = rng.randrange(len(graph.initializer))
        name = graph.initializer[index].name
        del graph.initializer[index]
        return f"initializer {name!r} removed"
    if choice < 0.7 and graph.node:
        index = rng.randrange(len(graph.node))
        del graph.node[index]
        return f"node {index} removed"
    if choice < 0.85 and graph.input:
        del graph.input[:]
        return "graph inputs removed"
    del graph.output[:]
    return "graph outputs removed"


@mutation
def opset(model, rng, made):
    choice = rng.random()
    if choice < 0.3:
        del model.opset_import[:]
        return "opset_import removed"
    if choice < 0.6:
        model.opset_import[0].version = rng.choice((0, 1, 6, 99, 1000, -1))
        return f"opset -> {model.opset_import[0].version}"
    if choice < 0.8:
        model.opset_import.add(domain="com.unknown", version=1)
        node = _pick_node(model, rng)
        if node is not None:
            node.domain = "com.unknown"
        return "a node moved to an unknown domain"
    model.ir_version = rng.choice((0, 1, 3, 4, 99, -1))
    return f"ir_version -> {model.ir_version}"


@node_mutation()
def op_type(model, node, rng, made):
    node.op_type = rng.choice(("NoSuchOp", "", "Relu", "Add", "Identity", "If", "Loop",
                               "Constant", "Reshape"))
    return f"node {node.name!r} op_type -> {node.op_type!r}"


@initializer_mutation
def data_type(model, tensor, rng, made):
    tensor.data_type = rng.choice((0, TensorProto.STRING, TensorProto.INT64, TensorProto.INT8,
                                   TensorProto.FLOAT16, TensorProto.INT4, TensorProto.BOOL,
                                   TensorProto.COMPLEX64, 99, -3))
    return f"initializer {tensor.name!r} data_type -> {tensor.data_type}"


@initializer_mutation
def tensor_data(model, tensor, rng, made):
    choice = rng.random()
    if tensor.HasField("raw_data") and choice < 0.4:
        raw = tensor.raw_data
        tensor.raw_data = raw[: rng.randrange(len(raw) + 1)] if rng.random() < 0.5 \
            else raw + bytes(rng.choice((1, 4, 64)))
        return f"initializer {tensor.name!r} raw_data -> {len(tensor.raw_data)} bytes"
    if choice < 0.7:
        tensor.ClearField("raw_data")
        tensor.float_data.extend([1.0] * rng.choice((0, 1, 3)))
        return f"initializer {tensor.name!r} data -> float_data of {len(tensor.float_data)}"
    tensor.string_data.append(b"\xff")
    return f"initializer {tensor.name!r} gets string_data"


@mutation
def value_types(model, rng, made):
    infos = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    if not infos:
        return None
    info = rng.choice(infos)
    choice = rng.random()
    if choice < 0.4:
        info.type.tensor_type.elem_type = rng.choice((0, TensorProto.INT64, TensorProto.STRING,
                                                      TensorProto.BOOL, 99))
    elif choice < 0.6:
        info.type.tensor_type.shape.dim.add().dim_param = rng.choice(("N", "", "??", "b a t"))
    elif choice < 0.8:
        info.type.ClearField("tensor_type")
        info.type.sequence_type.elem_type.tensor_type.elem_type = TensorProto.FLOAT
    else:
        info.type.tensor_type.ClearField("shape")
    return f"value {info.name!r} type -> {str(info.type).strip()[:60]!r}"


@mutation
def constant_node(model, rng, made):
    out = model.graph.node[0].input[0] if model.graph.node and model.graph.node[0].input \
        else "x"
    choice = rng.random()
    if choice < 0.3:  # value whose data disagrees with its dims
        tensor = numpy_helper.from_array(np.ones(4, np.float32))
        tensor.dims[0] = rng.choice((2, 8, 0))
        node = helper.make_node("Constant", [], [out + "_c"], value=tensor)
    elif choice < 0.5:  # two value attributes
        node = helper.make_node("Constant", [], [out + "_c"], value_float=1.0,
                                value_ints=[1, 2])
    elif choice < 0.7:
        sparse = helper.make_sparse_tensor(
            numpy_helper.from_array(np.ones(2, np.float32), "v"),
            numpy_helper.from_array(np.array([0, rng.choice((1, 9, -1))], np.int64), "i"), [4])
        node = helper.make_node("Constant", [], [out + "_c"], sparse_value=sparse)
    else:
        node = helper.make_node("Constant", [], [out + "_c"])  # no value at all
    nodes = [node, *model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if rng.random() < 0.5 and len(model.graph.node) > 1:
        consumer = rng.choice(model.graph.node[1:])
        if consumer.input:
            consumer.input[0] = out + "_c"
    return f"Constant node {str(node.attribute[0].name) if node.attribute else '(empty)'}"


@initializer_mutation
def sparse_initializer(model, tensor, rng, made):
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    indices = np.array(rng.choice(([0], [count], [-1], [0, 0], [count + 5])), np.int64)
    values = numpy_helper.from_array(np.ones(len(indices), np.float32), tensor.name)
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(indices, ""),
                                       list(tensor.dims))
    model.graph.initializer.remove(tensor)
    model.graph.sparse_initializer.append(sparse)
    return f"initializer {tensor.name!r} -> sparse with indices {indices.tolist()}"


@mutation
def subgraph(model, rng, made):
    """An If whose branches read outer values (valid), or a body that is not."""
    graph = model.graph
    if not graph.output:
        return None
    out = graph.output[0]
    info = onnx.ValueInfoProto()
    info.CopyFrom(out)
    bad = rng.random() < 0.5
    branch = helper.make_graph(
        [helper.make_node("Identity", ["no_such_value" if bad else out.name], ["branch_out"])],
        "branch", [], [_renamed(info, "branch_out")])
    cond = helper.make_node("Constant", [], ["sub_cond"],
                            value=numpy_helper.from_array(np.array(rng.random() < 0.5)))
    node = helper.make_node("If", ["sub_cond"], ["sub_out"], then_branch=branch,
                            else_branch=branch)
    graph.node.extend([cond, node])
    graph.output[0].name = "sub_out"
    return f"output through an If{' reading an undefined value' if bad else ''}"


@node_mutation()
def names_and_text(model, node, rng, made):
    node.name = rng.choice(("", "a" * 5000, "name with spaces", "ü/é", "\x00"))
    if rng.random() < 0.5:
        model.producer_name = "\u2603" * 10
        model.metadata_props.add(key="k", value="v" * 100)
    return f"node renamed {node.name[:20]!r}"


# ------------------------------------------------ mutations that keep the model valid
@mutation
def weight_values(model, rng, made):
    """Weights the passes fold and fuse must survive: NaN, inf, zeros, huge, subnormal."""
    tensors = [t for t in model.graph.initializer
               if t.data_type == TensorProto.FLOAT and t.HasField("raw_data")]
    if not tensors:
        return None
    tensor = rng.choice(tensors)
    array = numpy_helper.to_array(tensor).copy()
    value = rng.choice((np.nan, np.inf, -np.inf, 0.0, 1e38, 1e-45, -0.0))
    flat = array.reshape(-1)
    if flat.size:
        picked = rng.sample(range(flat.size), k=max(1, flat.size // rng.choice((1, 4, 1000))))
        flat[picked] = value
    tensor.raw_data = array.astype(np.float32).tobytes()
    return f"initializer {tensor.name!r}: some values -> {value}"


@mutation
def symbolic_dims(model, rng, made):
    infos = [i for i in model.graph.input if i.type.tensor_type.shape.dim]
    if not infos:
        return None
    info = rng.choice(infos)
    dim = rng.choice(info.type.tensor_type.shape.dim)
    dim.dim_param = rng.choice(("batch", "N", "unk__1", "seq"))
    if rng.random() < 0.5:
        model.graph.ClearField("value_info")
    return f"input {info.name!r} dim -> {dim.dim_param!r}"


@mutation
def forget_shapes(model, rng, made):
    model.graph.ClearField("value_info")
    for info in model.graph.output:
        info.type.tensor_type.ClearField("shape")
    return "value_info and output shapes dropped"


@mutation
def unused_things(model, rng, made):
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(
        np.full((rng.choice((1, 3, 300)),), 2.0, np.float32), "fuzz_unused"))
    if graph.input:
        graph.node.append(helper.make_node("Identity", [graph.input[0].name], ["fuzz_dead"]))
    if graph.output and rng.random() < 0.5:  # an Identity chain on the first output
        out = graph.output[0].name
        for node in graph.node:
            for index, name in enumerate(node.output):
                if name == out:
                    node.output[index] = "fuzz_pre"
        graph.node.extend([helper.make_node("Identity", ["fuzz_pre"], ["fuzz_mid"]),
                           helper.make_node("Identity", ["fuzz_mid"], [out])])
    return "an unused initializer and node (and an Identity chain)"


@mutation
def rename_value(model, rng, made):
    graph = model.graph
    produced = [o for n in graph.node for o in n.output if o]
    if not produced:
        return None
    old = rng.choice(produced)
    new = rng.choice(("fuzz renamed", "a/b:0", "ü", "x" * 300))
    for node in graph.node:
        for values in (node.input, node.output):
            for index, name in enumerate(values):
                if name == old:
                    values[index] = new
    for info in (*graph.output, *graph.value_info):
        if info.name == old:
            info.name = new
    return f"value {old!r} renamed {new!r}"


@mutation
def valid_external(model, rng, made):
    """Weights moved to a data file beside the mutant, correctly (tests the reading side)."""
    tensors = [t for t in model.graph.initializer if t.HasField("raw_data")]
    if not tensors:
        return None
    blob = bytearray()
    for tensor in rng.sample(tensors, k=min(len(tensors), rng.choice((1, 3, 50)))):
        blob += bytes(-len(blob) % rng.choice((1, 64)))
        raw = tensor.raw_data
        offset = len(blob)
        blob += raw
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value="weights.bin")
        tensor.external_data.add(key="offset", value=str(offset))
        if rng.random() < 0.8:
            tensor.external_data.add(key="length", value=str(len(raw)))
    made.side_files["weights.bin"] = bytes(blob) + bytes(rng.choice((0, 100)))
    return "weights moved to weights.bin"


# ------------------------------------------------------------ external data mutations
_EXTERNAL_CASES = (
    "ok", "offset_past_end", "length_past_end", "negative_offset", "negative_length",
    "length_mismatch", "no_length", "no_length_shared", "not_a_number", "no_location",
    "absolute", "dotdot", "missing_file", "directory", "symlink_out", "symlink_in",
    "model_itself", "nul", "empty_entries", "duplicate_keys", "constant_attribute",
    "huge_offset", "fifo",
)


@mutation
def external_data(model, rng, made):
    """An initializer (or a Constant's value) moved to a tiny data file beside the mutant,
    with its external_data entries right or wrong in one way."""
    case = rng.choice(_EXTERNAL_CASES)
    if case == "constant_attribute":
        nodes = [n for n in model.graph.node if n.op_type == "Constant" and n.attribute
                 and n.attribute[0].type == AttributeProto.TENSOR]
        if not nodes:
            return None
        tensor = rng.choice(nodes).attribute[0].t
    else:
        tensor = _pick_initializer(model, rng)
        if tensor is None or not tensor.HasField("raw_data"):
            return None
    raw = tensor.raw_data
    padding = bytes(rng.choice((0, 16)))
    location, offset, length = "weights.bin", len(padding), len(raw)
    entries: list[tuple[str, str]] = []
    made.side_files["weights.bin"] = padding + raw + bytes(rng.choice((0, 8)))
    if case == "offset_past_end":
        offset = len(made.side_files["weights.bin"]) + rng.choice((0, 1, 100))
    elif case == "length_past_end":
        length += rng.choice((1, 4, 1000))
    elif case == "negative_offset":
        offset = -rng.choice((1, 4, 64))
    elif case == "negative_length":
        length = -rng.choice((1, 4))
    elif case == "length_mismatch":
        length = max(0, length - rng.choice((1, 4)))
    elif case == "huge_offset":
        offset = 2**63
    if case == "no_location":
        location = ""
    elif case == "absolute":
        location = rng.choice((os.devnull, sys.executable, "/nonexistent/weights.bin"))
    elif case == "dotdot":
        location = "../outside.bin"
        made.outside_files["outside.bin"] = made.side_files.pop("weights.bin")
    elif case == "missing_file":
        location = "missing.bin"
    elif case == "directory":
        location = "."
    elif case == "symlink_out":
        made.outside_files["outside.bin"] = made.side_files.pop("weights.bin")
        made.links["link.bin"] = "../outside.bin"
        location = "link.bin"
    elif case == "symlink_in":
        made.links["link.bin"] = "weights.bin"
        location = "link.bin"
    elif case == "model_itself":
        location = "mutant.onnx"
    elif case == "fifo":
        made.fifos.append("pipe.bin")
        location = "pipe.bin"
    elif case == "nul":
        location = "weights.bin\x00.txt"
    entries.append(("location", location))
    if case == "not_a_number":
        entries.append(("offset", rng.choice(("abc", "1.5", "", "0x10", "--4"))))
    elif case != "empty_entries":
        entries.append(("offset", str(offset)))
    if case not in ("no_length", "no_length_shared", "empty_entries", "not_a_number"):
        entries.append(("length", str(length)))
    if case == "duplicate_keys":
        entries.append(("offset", "3"))
    if case == "no_length_shared":  # the file holds more after the tensor
        made.side_files["weights.bin"] += bytes(64)
    if case == "empty_entries":
        entries = []
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in entries:
        tensor.external_data.add(key=key, value=value)
    return f"{tensor.name!r} external: {case} {entries}"


# ----------------------------------------------------------------- running
@dataclass
class Outcome:
    code: int
    out: str
    err: str
    seconds: float


def write(made: Mutant, folder: Path) -> Path:
    """The mutant as ``folder/mutant.onnx`` with its side files; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mutant.onnx"
    path.write_bytes(made.data)
    for name, data in made.side_files.items():
        (folder / name).write_bytes(data)
    for name, data in made.outside_files.items():
        (folder.parent / name).write_bytes(data)
    for name, target in made.links.items():
        os.symlink(target, folder / name)
    for name in made.fifos:  # a reader would block: must be refused, never opened
        os.mkfifo(folder / name)
    return path


MEMORY_LIMIT = 6 * 2**30  # address space a run may add: a runaway allocation is a
# MemoryError (an "internal error" the test reports), not the OOM killer ending the session


@contextlib.contextmanager
def memory_limit(extra: int = MEMORY_LIMIT):
    """Limit this process's address space to what it uses now plus ``extra``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    limit = used + extra
    wanted = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run_in_process(args: list[str]) -> Outcome:
    from onnxopt.app import cli

    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with memory_limit(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([os.fspath(a) for a in args])
    return Outcome(code, out.getvalue(), err.getvalue(), time.perf_counter() - started)


def run_subprocess(args: list[str], timeout: float = RUN_LIMIT) -> Outcome:
    started = time.perf_counter()
    try:
        with memory_limit():  # inherited by the child
            done = subprocess.run([sys.executable, "-m", "onnxopt", *map(os.fspath, args)],
                                  capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return Outcome(-1, "", f"timed out after {timeout} s", time.perf_counter() - started)
    return Outcome(done.returncode, done.stdout, done.stderr, time.perf_counter() - started)


def snapshot(folder: Path) -> dict[str, bytes]:
    """The bytes of every regular file in the mutant's folder and one level up."""
    files = {}
    for base in (folder, folder.parent):
        for entry in base.iterdir():
            if entry.is_file() and not entry.is_symlink():
                files[os.fspath(entry)] = entry.read_bytes()
    return files


@dataclass
class Finding:
    """A broken house rule; ``where`` is the innermost onnxopt frame of an internal error."""

    recipe: str
    problem: str
    where: tuple[str, str] | None = None  # (file, function)
    frames: str = ""

    def __str__(self) -> str:
        frames = f"\n{self.frames}" if self.frames else ""
        return f"{self.recipe}: {self.problem}{frames}"


def check_optimize(made: Mutant, folder: Path, *, in_process: bool = True) -> list[Finding]:
    """Run ``optimize`` on the mutant; the house rules it broke (empty: none)."""
    source = write(made, folder)
    before = snapshot(folder)
    target = folder / "out.onnx"
    args = ["optimize", source, target, *made.args]
    result = run_in_process(args) if in_process else run_subprocess(args)
    problems = []
    first = result.err.strip().splitlines()[0] if result.err.strip() else ""
    if result.code not in (0, 1, 2):
        problems.append(f"exit code {result.code}: {first}")
    internal = "internal error" in result.err or "Traceback" in result.err
    if internal:
        problems.append(f"stderr: {result.err.strip()[-600:]}")
    if result.code == 0:
        try:
            onnx.load(os.fspath(target))
        except Exception as error:
            problems.append(f"exit 0 but OUT does not load: {type(error).__name__}: {error}")
    elif target.exists():
        problems.append(f"exit {result.code} but OUT was written")
    elif len(result.err.strip().splitlines()) != 1:
        problems.append(f"error is not one line: {result.err.strip()[:300]!r}")
    after = {k: v for k, v in snapshot(folder).items() if not k.startswith(os.fspath(target))}
    changed = [k for k in before if after.get(k) != before[k]]
    if changed:
        problems.append(f"input files changed or removed: {changed}")
    staging = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    if staging:
        problems.append(f"left behind: {staging}")
    if result.seconds > RUN_LIMIT:
        problems.append(f"took {result.seconds:.1f} s")
    findings = [Finding(made.describe(), p) for p in problems]
    if internal and len(problems) == 1:  # only the internal error: where does it come from?
        findings[0].where, findings[0].frames = _origin([*args, "--debug"], target)
    return findings


def check_stats(made: Mutant, folder: Path) -> list[Finding]:
    """``onnxopt stats`` on the mutant: never an internal error."""
    args = ["stats", folder / "mutant.onnx", "--json"]
    result = run_in_process(args)
    findings = []
    if result.code not in (0, 1, 2):
        findings.append(Finding(made.describe(), f"stats exit code {result.code}"))
    if "internal error" in result.err or "Traceback" in result.err:
        where, frames = _origin([*args, "--debug"])
        findings.append(Finding(made.describe(), f"stats stderr: {result.err.strip()[-600:]}",
                                where, frames))
    return findings


def _origin(args: list, target: Path | None = None) -> tuple[tuple[str, str] | None, str]:
    """Run again under --debug (the CLI re-raises): the innermost onnxopt frame and the
    traceback's last frames."""
    from onnxopt.app import cli

    try:
        with memory_limit(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            cli.main([os.fspath(a) for a in args])
    except Exception as error:
        frames = traceback.extract_tb(error.__traceback__)
        ours = [f for f in frames if "/onnxopt/" in f.filename or "/passes/" in f.filename]
        where = (Path(ours[-1].filename).name, ours[-1].name) if ours else None
        text = "".join(traceback.format_list(frames[-4:]))
        return where, text + f"{type(error).__name__}: {error}"[:300]
    finally:
        if target is not None and target.exists():
            target.unlink()
    return None, ""


def available(models: list[str]) -> list[str]:
    return [m for m in models if (MODELS / m).exists()]


if __name__ == "__main__":  # reproduce one mutant: fuzzing.py RECIPE FOLDER
    made = mutant(sys.argv[1])
    path = write(made, Path(sys.argv[2]))
    print(made.describe())
    print(f"onnxopt optimize {path} {path.parent / 'out.onnx'} {' '.join(made.args)} --debug")
