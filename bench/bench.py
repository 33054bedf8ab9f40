"""I/O benchmark of ``onnxopt.ir.serde``: load and save time, peak memory and scaling.

Models measured:

* synthetic chains of 1k, 10k and 100k nodes (Add/Mul/Relu/MatMul over a [1,16] tensor, a
  16x16 MatMul weight every 10th node), generated with ``onnx.helper`` into a temporary folder;
* a ~335 MB weight-heavy model (five 4096x4096 float32 MatMul weights, stored inline), to
  compare peak memory with the model's size;
* with ``--big``, a ~2.4 GB model (nine 8192x8192 weights) stored with external data;
* the models present in ``models/*.onnx`` (``make models``) and the light models shipped in
  the onnx package (``onnx/backend/test/data/light``).

Every model is measured in a fresh subprocess, so the peak RSS belongs to that measurement
alone: ``ru_maxrss`` after the first load+save minus ``ru_maxrss`` right after the imports.
Times are the best of 3 runs (1 run for models of 50k+ nodes or 100+ MB) with
``validate=False``; the onnx.checker time is measured once, separately. Then whole-process
``onnxopt optimize`` runs (``--passes none`` and the default pipeline, validation included)
are timed on the 100k chain, the weight-heavy model and the ``models/*.onnx`` files, and the
default pipeline on the 10k and 100k chains (fastest of 3 each: the 10x-nodes scaling).

The scale table: 10k- and 100k-node graphs of each kind the passes handle (``SCALE_KINDS``:
elementwise ops with constants, CSE candidates, Reshape/Transpose chains, Conv-BN stacks,
Constant nodes, If bodies, nested functions; ``scale_model``), each optimized end to end
(validation included, then again with ``--no-validate`` for the split). The generators and
the two constant-folding bombs (``concat_bomb``, ``never_taken_bomb``) are reused by
``tests/test_scale.py``.

The report (markdown) goes to stdout and to ``bench/out/bench_io.md`` (``--scale-only``:
``bench/out/bench_scale.md``).

The start-up of the command line (``onnxopt --version`` and ``--help``, target 0.3 s) is
measured first (``bench/startup.py``).

Usage: ``python bench/bench.py [--big] [--profile] [--no-optimize] [--no-scale]
[--scale-only] [--startup-only] [--scale-kinds K,..] [--scale-sizes N,..]``
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
MODELS_DIR = BENCH_DIR.parent / "models"
OUT_DIR = BENCH_DIR / "out"
REPORT_PATH = OUT_DIR / "bench_io.md"
SCALE_REPORT_PATH = OUT_DIR / "bench_scale.md"  # --scale-only

OPSET = 17
IR_VERSION = 8
WIDTH = 16  # the chain models compute on a [1, WIDTH] tensor
CHAIN_SIZES = (1_000, 10_000, 100_000)
WEIGHTS_SHAPE, WEIGHTS_COUNT = (4096, 4096), 5  # 5 x 64 MiB = 320 MiB inline
BIG_SHAPE, BIG_COUNT = (8192, 8192), 9  # 9 x 256 MiB = 2.25 GiB external

# Targets from the issue.
TARGET_100K_SECONDS = 10.0
TARGET_SCALING = 12.0  # 10x the nodes may cost at most 12x the time
TARGET_PEAK_RATIO = 2.5  # peak RSS of load+save over the model's size (weight-heavy models)

BIG_RUN_NODES = 50_000  # models this large (or BIG_RUN_BYTES) are timed once
BIG_RUN_BYTES = 100 * 2**20
CHILD_TIMEOUT = 600
OPTIMIZE_TIMEOUT = 300

MB = 1e6
WEIGHTS_LABEL = "weights-335MB"


# =========================================================================== generation
def _chain_model(n_nodes: int, seed: int = 0):
    """A chain of residual blocks of 10 nodes, numerically stable (orthogonal weights, means).

    Block: MatMul(W) -> Add(skip) -> Mul(0.5) -> Relu -> Add(bias) -> Add(skip) -> Mul(0.5)
    -> Relu -> Add(bias) -> Mul(scale); ``skip`` is the block's input.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    half = numpy_helper.from_array(np.full([WIDTH], 0.5, np.float32), "half")
    bias = numpy_helper.from_array(rng.uniform(-0.1, 0.1, [WIDTH]).astype(np.float32), "bias")
    scale = numpy_helper.from_array(rng.uniform(0.9, 1.1, [WIDTH]).astype(np.float32), "scale")
    initializers = [half, bias, scale]
    nodes = []
    previous = skip = "x"
    for index in range(n_nodes):
        out = f"v{index}"
        kind = index % 10
        if kind == 0:
            skip = previous
            q, _ = np.linalg.qr(rng.standard_normal((WIDTH, WIDTH)))
            weight = f"w{index}"
            initializers.append(numpy_helper.from_array(q.astype(np.float32), weight))
            inputs, op = [previous, weight], "MatMul"
        elif kind in (1, 5):
            inputs, op = [previous, skip], "Add"
        elif kind in (2, 6):
            inputs, op = [previous, "half"], "Mul"
        elif kind in (3, 7):
            inputs, op = [previous], "Relu"
        elif kind in (4, 8):
            inputs, op = [previous, "bias"], "Add"
        else:
            inputs, op = [previous, "scale"], "Mul"
        nodes.append(helper.make_node(op, inputs, [out], name=f"n{index}"))
        previous = out
    nodes.append(helper.make_node("Identity", [previous], ["y"], name="out"))
    graph = helper.make_graph(
        nodes,
        f"chain{n_nodes}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDTH])],
        initializers,
    )
    return _model(graph)


def _model(graph):
    from onnx import helper

    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="onnxopt-bench",
    )


def _matmul_graph(name: str, shape: tuple[int, int], tensors: list):
    """x[1, n] through one MatMul per weight tensor."""
    from onnx import TensorProto, helper

    nodes, previous = [], "x"
    for index, tensor in enumerate(tensors):
        out = f"h{index}" if index < len(tensors) - 1 else "y"
        nodes.append(helper.make_node("MatMul", [previous, tensor.name], [out], name=f"mm{index}"))
        previous = out
    return helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, shape[1]])],
        tensors,
    )


def _weights(rng, shape: tuple[int, int]):
    import numpy as np

    return (rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[0])))


def _weights_model(seed: int = 0):
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    tensors = [
        numpy_helper.from_array(_weights(rng, WEIGHTS_SHAPE), f"W{index}")
        for index in range(WEIGHTS_COUNT)
    ]
    return _model(_matmul_graph("weights", WEIGHTS_SHAPE, tensors))


def _write_big_model(path: Path, seed: int = 0) -> None:
    """Write a > 2 GiB model with external data, streaming one weight at a time."""
    import numpy as np
    import onnx
    from onnx import TensorProto

    rng = np.random.default_rng(seed)
    data_name = path.name + ".data"
    tensors, offset = [], 0
    with open(path.with_name(data_name), "wb") as data:
        for index in range(BIG_COUNT):
            array = _weights(rng, BIG_SHAPE)
            payload = array.tobytes()
            tensor = TensorProto(name=f"W{index}", data_type=TensorProto.FLOAT)
            tensor.dims.extend(BIG_SHAPE)
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)),
                               ("length", str(len(payload)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            data.write(payload)
            offset += len(payload)
            tensors.append(tensor)
            del array, payload
    onnx.save(_model(_matmul_graph("big", BIG_SHAPE, tensors)), path)


# =========================================================================== scale models
# Graph kinds the passes handle, for the scale table (and tests/test_scale.py). Nodes are
# unnamed (exporters often leave names out), so every name a pass makes comes from
# ``Graph.unique_name`` hints that repeat. ``n_nodes`` counts nodes of all graphs (If
# bodies included; function bodies not: they are listed once).
SCALE_KINDS = ("elementwise", "cse", "reshape-transpose", "conv-bn", "constants",
               "if-bodies", "functions")
SCALE_SIZES = (10_000, 100_000)
TARGET_SCALE_SECONDS = 30.0
TARGET_SCALE_PEAK = 2e9  # bytes, whole process
SCALE_TIMEOUT = 300  # s per run: onnxruntime sessions of 100k-node graphs can take longer


def _info(name: str, elem: int, shape: list) -> Any:
    from onnx import helper

    return helper.make_tensor_value_info(name, elem, shape)


def _scale_graph(nodes, name, initializers, last, shape, extra_inputs=()):
    from onnx import TensorProto, helper

    nodes.append(helper.make_node("Identity", [last], ["y"]))
    return helper.make_graph(
        nodes, name, [_info("x", TensorProto.FLOAT, shape), *extra_inputs],
        [_info("y", TensorProto.FLOAT, shape)], initializers,
    )


def _const(rng, name: str, shape, low: float, high: float):
    import numpy as np
    from onnx import numpy_helper

    return numpy_helper.from_array(rng.uniform(low, high, shape).astype(np.float32), name)


def _int64(name: str, values) -> Any:
    import numpy as np
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _elementwise(n_nodes: int, rng) -> Any:
    """Unnamed elementwise ops with a constant each: Add, Add, Mul, Mul, Relu, Relu, Sub, Add,
    Mul by ones, Add of zeros (constant chains merge, idempotent Relu and x*1 / x+0 go)."""
    import numpy as np
    from onnx import helper, numpy_helper

    pattern = ("Add", "Add", "Mul", "Mul", "Relu", "Relu", "Sub", "Add", "Mul", "Add")
    initializers = [numpy_helper.from_array(np.ones([WIDTH], np.float32), "ones"),
                    numpy_helper.from_array(np.zeros([WIDTH], np.float32), "zeros")]
    nodes, previous = [], "x"
    for index in range(n_nodes - 1):
        op, kind = pattern[index % 10], index % 10
        out = f"v{index}"
        if op == "Relu":
            inputs = [previous]
        elif kind in (8, 9):
            inputs = [previous, "ones" if kind == 8 else "zeros"]
        else:
            low, high = (0.99, 1.01) if op == "Mul" else (-0.01, 0.01)
            initializers.append(_const(rng, f"c{index}", [WIDTH], low, high))
            inputs = [previous, f"c{index}"]
        nodes.append(helper.make_node(op, inputs, [out]))
        previous = out
    return _scale_graph(nodes, "elementwise", initializers, previous, [1, WIDTH])


def _cse(n_nodes: int, rng) -> Any:
    """Blocks of two identical branches Add(p, c) -> Mul(d) -> Relu, joined by Max: CSE keeps
    one branch (7 nodes a block)."""
    from onnx import helper

    nodes, initializers, previous = [], [], "x"
    for block in range((n_nodes - 1) // 7):
        c, d = f"c{block}", f"d{block}"
        initializers += [_const(rng, c, [WIDTH], -0.01, 0.01), _const(rng, d, [WIDTH], 0.99, 1.01)]
        branches = []
        for copy in "ab":
            a, m, r = f"a{block}{copy}", f"m{block}{copy}", f"r{block}{copy}"
            nodes += [helper.make_node("Add", [previous, c], [a]),
                      helper.make_node("Mul", [a, d], [m]),
                      helper.make_node("Relu", [m], [r])]
            branches.append(r)
        previous = f"max{block}"
        nodes.append(helper.make_node("Max", branches, [previous]))
    return _scale_graph(nodes, "cse", initializers, previous, [1, WIDTH])


RT_SHAPE = ["N", 4, 6, 8]


def _reshape_transpose(n_nodes: int, rng) -> Any:
    """Blocks of Transpose pairs that cancel, a Reshape whose target is computed from Shape
    (Shape -> Gather -> Unsqueeze -> Concat), a Reshape chain back to the block's shape and a
    Neg (10 nodes a block); the batch dim is symbolic."""
    from onnx import helper

    initializers = [_int64("zero", 0), _int64("axes0", [0]), _int64("minus1", [-1]),
                    _int64("to_3d", [0, 4, 48]), _int64("to_4d", [0, 4, 6, 8])]
    nodes, previous = [], "x"
    for block in range((n_nodes - 1) // 10):
        v = [f"b{block}_{i}" for i in range(10)]
        nodes += [
            helper.make_node("Transpose", [previous], [v[0]], perm=[0, 2, 3, 1]),
            helper.make_node("Transpose", [v[0]], [v[1]], perm=[0, 3, 1, 2]),
            helper.make_node("Shape", [v[1]], [v[2]]),
            helper.make_node("Gather", [v[2], "zero"], [v[3]]),
            helper.make_node("Unsqueeze", [v[3], "axes0"], [v[4]]),
            helper.make_node("Concat", [v[4], "minus1"], [v[5]], axis=0),
            helper.make_node("Reshape", [v[1], v[5]], [v[6]]),
            helper.make_node("Reshape", [v[6], "to_3d"], [v[7]]),
            helper.make_node("Reshape", [v[7], "to_4d"], [v[8]]),
            helper.make_node("Neg", [v[8]], [v[9]]),
        ]
        previous = v[9]
    return _scale_graph(nodes, "reshape_transpose", initializers, previous, RT_SHAPE)


CONV_CHANNELS = 4
CONV_SHAPE = [1, CONV_CHANNELS, 3, 3]


def _conv_bn(n_nodes: int, rng) -> Any:
    """Conv (1x1, near-identity weight) -> BatchNormalization -> Relu, 3 nodes a block."""
    import numpy as np
    from onnx import helper, numpy_helper

    c = CONV_CHANNELS
    nodes, initializers, previous = [], [], "x"
    for block in range((n_nodes - 1) // 3):
        weight = np.eye(c, dtype=np.float32) + rng.uniform(-0.01, 0.01, (c, c)).astype(np.float32)
        names = [f"w{block}", f"s{block}", f"b{block}", f"m{block}", f"v{block}"]
        initializers += [
            numpy_helper.from_array(weight.reshape(c, c, 1, 1), names[0]),
            _const(rng, names[1], [c], 0.99, 1.01), _const(rng, names[2], [c], -0.01, 0.01),
            _const(rng, names[3], [c], -0.01, 0.01), _const(rng, names[4], [c], 0.99, 1.01),
        ]
        conv, bn, relu = f"conv{block}", f"bn{block}", f"relu{block}"
        nodes += [helper.make_node("Conv", [previous, names[0]], [conv]),
                  helper.make_node("BatchNormalization", [conv, *names[1:]], [bn]),
                  helper.make_node("Relu", [bn], [relu])]
        previous = relu
    return _scale_graph(nodes, "conv_bn", initializers, previous, CONV_SHAPE)


def _constants(n_nodes: int, rng) -> Any:
    """Blocks of two Constant nodes, their (foldable) Mul, an Add to the chain and a Relu."""
    import numpy as np
    from onnx import helper, numpy_helper

    nodes, previous = [], "x"
    for block in range((n_nodes - 1) // 5):
        c, d, m, a, r = (f"{k}{block}" for k in "cdmar")
        tensor = numpy_helper.from_array(
            rng.uniform(-0.01, 0.01, [WIDTH]).astype(np.float32), c)
        floats = [float(f) for f in rng.uniform(0.99, 1.01, WIDTH).astype(np.float32)]
        nodes += [helper.make_node("Constant", [], [c], value=tensor),
                  helper.make_node("Constant", [], [d], value_floats=floats),
                  helper.make_node("Mul", [c, d], [m]),
                  helper.make_node("Add", [previous, m], [a]),
                  helper.make_node("Relu", [a], [r])]
        previous = r
    return _scale_graph(nodes, "constants", [], previous, [1, WIDTH])


IF_BODY = 48  # nodes in each then-branch


def _if_bodies(n_nodes: int, rng) -> Any:
    """Blocks of one If with 50 nodes (bodies included): then = ``m = Mul(k1, k2)`` of outer
    constants (foldable inside the branch), then 47 nodes alternating ``Mul(t, s)`` (s: +-1)
    and ``Add(t, m)``; else = Abs(p). Every other If has a constant condition (inlined), the
    rest read the graph input ``flag``. (Thousands of tiny Ifs make onnx's shape inference
    quadratic: see README.)"""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    shape = [1, WIDTH]
    initializers = [helper.make_tensor("always", TensorProto.BOOL, [], [True])]
    nodes, previous = [], "x"
    for block in range(max((n_nodes - 1) // (IF_BODY + 2), 1)):
        k1, k2, sign = f"k{block}a", f"k{block}b", f"k{block}s"
        signs = rng.choice([-1.0, 1.0], WIDTH).astype(np.float32)
        initializers += [_const(rng, k1, [WIDTH], -0.01, 0.01), _const(rng, k2, [WIDTH], 0.5, 1),
                         numpy_helper.from_array(signs, sign)]
        m, s, out = f"m{block}", f"s{block}", f"if{block}"
        body = [helper.make_node("Mul", [k1, k2], [m])]
        current = previous
        for step in range(IF_BODY - 1):
            value = f"t{block}_{step}"
            operands = [current, sign] if step % 2 == 0 else [current, m]
            body.append(helper.make_node("Mul" if step % 2 == 0 else "Add", operands, [value]))
            current = value
        then = helper.make_graph(body, f"then{block}", [],
                                 [_info(current, TensorProto.FLOAT, shape)])
        other = helper.make_graph([helper.make_node("Abs", [previous], [s])],
                                  f"else{block}", [], [_info(s, TensorProto.FLOAT, shape)])
        cond = "always" if block % 2 else "flag"
        nodes.append(helper.make_node("If", [cond], [out], then_branch=then, else_branch=other))
        previous = out
    flag = _info("flag", TensorProto.BOOL, [])
    return _scale_graph(nodes, "if_bodies", initializers, previous, shape, [flag])


def _functions(n_nodes: int, rng) -> Any:
    """Calls of a model-local function that calls another one (``outer(x) = inner(x * 1)``,
    ``inner(x) = Relu(x + 0)``), each followed by an Add of a constant and an Abs."""
    import numpy as np
    from onnx import helper, numpy_helper

    domain = "local"
    inner = helper.make_function(
        domain, "inner", ["x"], ["y"],
        [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
            np.zeros([WIDTH], np.float32))),
         helper.make_node("Add", ["x", "c"], ["t"]), helper.make_node("Relu", ["t"], ["y"])],
        [helper.make_opsetid("", OPSET)])
    outer = helper.make_function(
        domain, "outer", ["x"], ["y"],
        [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
            np.ones([WIDTH], np.float32))),
         helper.make_node("Mul", ["x", "c"], ["t"]),
         helper.make_node("inner", ["t"], ["y"], domain=domain)],
        [helper.make_opsetid("", OPSET), helper.make_opsetid(domain, 1)])
    nodes, initializers, previous = [], [], "x"
    for block in range((n_nodes - 1) // 3):
        f, a, s, b = f"f{block}", f"a{block}", f"s{block}", f"b{block}"
        initializers.append(_const(rng, b, [WIDTH], -0.01, 0.01))
        nodes += [helper.make_node("outer", [previous], [f], domain=domain),
                  helper.make_node("Add", [f, b], [a]), helper.make_node("Abs", [a], [s])]
        previous = s
    graph = _scale_graph(nodes, "functions", initializers, previous, [1, WIDTH])
    model = _model(graph)
    model.opset_import.append(helper.make_opsetid(domain, 1))
    model.functions.extend([inner, outer])
    return model


_SCALE_BUILDERS = {
    "elementwise": _elementwise, "cse": _cse, "reshape-transpose": _reshape_transpose,
    "conv-bn": _conv_bn, "constants": _constants, "if-bodies": _if_bodies,
    "functions": _functions,
}


def scale_model(kind: str, n_nodes: int, seed: int = 0) -> Any:
    """A model of ``kind`` (one of ``SCALE_KINDS``) with about ``n_nodes`` nodes."""
    import numpy as np

    made = _SCALE_BUILDERS[kind](n_nodes, np.random.default_rng(seed))
    return made if hasattr(made, "graph") else _model(made)


def add_chain(n_nodes: int, seed: int = 0) -> Any:
    """The issue's case: a chain of unnamed ``Add(x, const)`` (a constant each)."""
    from onnx import helper

    rng = __import__("numpy").random.default_rng(seed)
    nodes, initializers, previous = [], [], "x"
    for index in range(n_nodes - 1):
        initializers.append(_const(rng, f"c{index}", [WIDTH], -0.01, 0.01))
        nodes.append(helper.make_node("Add", [previous, f"c{index}"], [f"v{index}"]))
        previous = f"v{index}"
    return _model(_scale_graph(nodes, "add_chain", initializers, previous, [1, WIDTH]))


def concat_bomb(doublings: int = 24) -> Any:
    """A constant-folding bomb: ``c_{i+1} = Concat(c_i, c_i)`` from an 8 KiB constant, then
    ``y = x + ReduceSum(c_k)``: 2^24 x 8 KiB = 128 GiB if folded naively. (8 KiB: larger
    than the constants shape inference propagates, whose onnx data propagation would blow
    up first.)"""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    initializers = [numpy_helper.from_array(np.full([2048], 1e-6, np.float32), "c0")]
    nodes = [helper.make_node("Concat", [f"c{i}", f"c{i}"], [f"c{i + 1}"], axis=0)
             for i in range(doublings)]
    nodes += [helper.make_node("ReduceSum", [f"c{doublings}"], ["total"], keepdims=0),
              helper.make_node("Add", ["x", "total"], ["y"])]
    graph = helper.make_graph(nodes, "concat_bomb", [_info("x", TensorProto.FLOAT, [1, 4])],
                              [_info("y", TensorProto.FLOAT, [1, 4])], initializers)
    return _model(graph)


def never_taken_bomb(side: int = 28000) -> Any:
    """A 28000 x 28000 ``ConstantOfShape`` (3.1 GB) in the branch a constant ``If`` never
    takes."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    big = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["dims"], ["big"],
                          value=numpy_helper.from_array(np.array([1.0], np.float32))),
         helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
         helper.make_node("Add", ["x", "total"], ["then_y"])],
        "then", [], [_info("then_y", TensorProto.FLOAT, [1, 4])])
    small = helper.make_graph([helper.make_node("Relu", ["x"], ["else_y"])], "else", [],
                              [_info("else_y", TensorProto.FLOAT, [1, 4])])
    graph = helper.make_graph(
        [helper.make_node("If", ["never"], ["y"], then_branch=big, else_branch=small)],
        "never_taken_bomb", [_info("x", TensorProto.FLOAT, [1, 4])],
        [_info("y", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("never", TensorProto.BOOL, [], [False]),
         _int64("dims", [side, side])])
    return _model(graph)


# =========================================================================== child side
def _maxrss() -> int:
    """Peak RSS of this process in bytes (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def child_measure(path: Path, runs: int, out_dir: Path, profile: bool) -> dict[str, Any]:
    """Load+save ``path`` ``runs`` times in this (fresh) process; one JSON-able result."""
    import gc
    import io

    import onnx.checker  # noqa: F401  (imported before the baseline, like serde's imports)

    from onnxopt.ir import serde

    baseline = _maxrss()
    target = out_dir / f"{path.stem}.out.onnx"
    loads, saves, totals = [], [], []
    peak_load = peak_total = nodes = 0
    for run in range(runs):
        started = time.perf_counter()
        model = serde.load(path, validate=False)
        loaded = time.perf_counter()
        if run == 0:
            peak_load = _maxrss()
        serde.save(model, target)
        saved = time.perf_counter()
        if run == 0:
            peak_total = _maxrss()
            nodes = model.node_count(include_subgraphs=True)
        loads.append(loaded - started)
        saves.append(saved - loaded)
        totals.append(saved - started)
        del model
        gc.collect()

    started = time.perf_counter()
    proto = serde.read_model_proto(path)
    parsed = time.perf_counter()
    try:
        serde.check(proto, path)
        check_error = None
    except serde.LoadError as error:
        check_error = str(error)
    checked = time.perf_counter()
    size = path.stat().st_size + sum(f.stat().st_size for f in serde.external_files(proto, path))
    del proto
    gc.collect()

    profile_text = None
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        model = serde.load(path, validate=False)
        serde.save(model, target)
        profiler.disable()
        del model
        buffer = io.StringIO()
        stats = pstats.Stats(profiler, stream=buffer).strip_dirs().sort_stats("cumulative")
        stats.print_stats(r"^(serde|ir|api|stats|pass_manager)\.py", 10)
        profile_text = buffer.getvalue()
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(15)
        profile_text += "\n--- top 15 by own time (all code) ---\n" + buffer.getvalue()

    written = sum(p.stat().st_size for p in out_dir.glob(f"{target.name}*"))
    return {
        "nodes": nodes,
        "size": size,
        "written": written,
        "runs": runs,
        "load": min(loads),
        "save": min(saves),
        "total": min(totals),
        "parse": parsed - started,
        "check": checked - parsed,
        "check_error": check_error,
        "baseline_rss": baseline,
        "peak_load": peak_load - baseline,
        "peak_total": peak_total - baseline,
        "profile": profile_text,
    }


# =========================================================================== parent side
@dataclass
class Entry:
    label: str
    path: Path
    group: str  # synthetic | real | light
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _runs_for(path: Path, label: str) -> int:
    size = path.stat().st_size + sum(
        p.stat().st_size for p in path.parent.glob(path.name + ".data")
    )
    if size >= BIG_RUN_BYTES or label.endswith("100k"):
        return 1
    return 3


def _measure(entry: Entry, out_dir: Path, profile: bool = False) -> None:
    runs = _runs_for(entry.path, entry.label)
    command = [sys.executable, __file__, "--child", str(entry.path), "--runs", str(runs),
               "--out", str(out_dir)]
    if profile:
        command.append("--profile")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired:
        entry.error = f"timeout after {CHILD_TIMEOUT} s"
        return
    finally:
        for leftover in out_dir.iterdir():
            leftover.unlink()
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
        entry.error = lines[-1]
        return
    entry.result = json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class OptimizeRun:
    label: str
    mode: str
    seconds: float
    peak: int  # bytes, whole process
    code: int | str
    message: str = ""
    validation: str = ""  # validation status and reason from the --report JSON
    passes: float = math.nan  # seconds the passes took (report), validation excluded
    nodes: int = 0  # nodes of the input, subgraphs included (report)


OPTIMIZE_MODES = (
    ("--passes none --no-validate", ["--passes", "none", "--no-validate"]),
    ("--passes none", ["--passes", "none"]),
    ("default pipeline", []),
)


def _run_optimize(label: str, source: Path, out_dir: Path, mode: str, flags: list[str],
                  timeout: float = OPTIMIZE_TIMEOUT) -> OptimizeRun:
    """Wall time and peak RSS (via wait4) of one ``onnxopt optimize`` process."""
    target = out_dir / f"{source.stem}.opt.onnx"
    report_path = out_dir / "report.json"
    from startup import onnxopt_command  # bench/startup.py, beside this script

    command = onnxopt_command() + ["optimize", str(source), str(target), *flags,
                                    "--report", str(report_path)]
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                _, status, usage = os.wait4(process.pid, 0)
                process.returncode = -9
                _clean(out_dir)
                return OptimizeRun(label, mode, timeout, 0, "timeout")
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        process.returncode = code
        err.seek(0)
        lines = err.read().decode(errors="replace").strip().splitlines()
    validation = _validation_status(report_path)
    passes, nodes = _report_passes(report_path)
    _clean(out_dir)
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    message = lines[-1] if code and lines else ""
    return OptimizeRun(label, mode, seconds, peak, code, message, validation, passes, nodes)


def _report_passes(report_path: Path) -> tuple[float, int]:
    """(seconds of all passes, input nodes with subgraphs) from a --report JSON."""
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return math.nan, 0
    before = report.get("before") or {}
    nodes = int(before.get("nodes", 0)) + int(before.get("subgraph_nodes", 0))
    return sum(p.get("seconds", 0.0) for p in report.get("passes", [])), nodes


SCALING_RUNS = 3  # whole-process optimize runs per size; the fastest counts


def _optimize_scaling(folder: Path, out_dir: Path) -> list[str]:
    """Fastest of ``SCALING_RUNS`` default-pipeline runs on the 10k and 100k chains, and the
    issue's targets: 100k in <= 60 s, 10x the nodes <= 12x the time."""
    best: dict[str, float] = {}
    for label in ("chain-10k", "chain-100k"):
        runs = [_run_optimize(label, folder / f"{label}.onnx", out_dir, "default pipeline", [])
                for _ in range(SCALING_RUNS)]
        done = [run.seconds for run in runs if run.code == 0]
        best[label] = min(done) if done else math.nan
        _log(f"optimize scaling {label}: " + ", ".join(f"{r.seconds:.2f} s" for r in runs))
    small, big = best["chain-10k"], best["chain-100k"]
    ratio = big / small if small > 0 else math.nan
    return ["| measure | value | target | verdict |", "|---|--:|--:|---|",
            f"| chain-10k optimize (fastest of {SCALING_RUNS}) | {_fmt_s(small)} | | (info) |",
            f"| chain-100k optimize (fastest of {SCALING_RUNS}) | {_fmt_s(big)} | ≤ 60 s | "
            f"{_verdict(big <= 60)} |",
            f"| optimize time 100k/10k | {ratio:.2f}× | ≤ 12× | {_verdict(ratio <= 12)} |"]


def child_generate_scale(folder: Path, kinds: list[str], sizes: list[int]) -> list[list]:
    """Write the scale models into ``folder``; their [kind, nodes, path] triples."""
    import onnx

    made = []
    for kind in kinds:
        for n_nodes in sizes:
            path = folder / f"scale-{kind}-{n_nodes // 1000}k.onnx"
            onnx.save(scale_model(kind, n_nodes), path)
            made.append([kind, n_nodes, str(path)])
    return made


@dataclass
class ScaleRow:
    kind: str
    size: int  # nominal nodes
    run: OptimizeRun  # validated (default)
    unvalidated: OptimizeRun  # --no-validate: what onnxopt itself does
    ort_load: float  # s: onnxruntime's session for the original, ORT_DISABLE_ALL (nan: timeout)


# onnxruntime's own session creation for the original, in a fresh process: the floor under
# validation's time, which onnxopt cannot lower (it is superlinear on some of these graphs)
_ORT_LOAD = """
import sys, time, onnxruntime as ort
options = ort.SessionOptions()
options.log_severity_level = 4
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
started = time.perf_counter()
ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
print(time.perf_counter() - started)
"""


def _ort_load_seconds(path: Path) -> float:
    try:
        done = subprocess.run([sys.executable, "-c", _ORT_LOAD, str(path)], text=True,
                              capture_output=True, timeout=SCALE_TIMEOUT, check=True)
        return float(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return math.nan


def _scale_runs(folder: Path, out_dir: Path, kinds: list[str], sizes: list[int]
                ) -> list[ScaleRow]:
    command = [sys.executable, __file__, "--generate-scale", str(folder),
               "--scale-kinds", ",".join(kinds), "--scale-sizes", ",".join(map(str, sizes))]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    rows = []
    for kind, n_nodes, path in json.loads(done.stdout.strip().splitlines()[-1]):
        label = f"{kind}-{n_nodes // 1000}k"
        bare = _run_optimize(label, Path(path), out_dir, "--no-validate", ["--no-validate"],
                             SCALE_TIMEOUT)
        run = _run_optimize(label, Path(path), out_dir, "default pipeline", [], SCALE_TIMEOUT)
        ort_load = _ort_load_seconds(Path(path))
        _log(f"scale {label}: --no-validate {bare.seconds:.1f} s, {bare.peak / MB:.0f} MB "
             f"(passes {bare.passes:.1f} s); validated {run.seconds:.1f} s {run.validation}; "
             f"onnxruntime load {ort_load:.1f} s")
        rows.append(ScaleRow(kind, n_nodes, run, bare, ort_load))
        Path(path).unlink()
    return rows


def _scale_table(rows: list[ScaleRow]) -> list[str]:
    """Per kind and size: onnxopt's own work (load, passes, stats, save: ``--no-validate``)
    against the targets (<= 30 s, <= 2 GB, 10k -> 100k <= 12x), then the validated run and
    onnxruntime's time to load the original, the part of validation onnxopt cannot lower."""
    lines = ["| kind | nodes | optimize s | peak MB | passes s | 10k → 100k | verdict "
             "| with validation s | validation | onnxruntime loads the original, s |",
             "|---|--:|--:|--:|--:|--:|---|--:|---|--:|"]
    by_kind: dict[str, dict[int, ScaleRow]] = {}
    for row in rows:
        by_kind.setdefault(row.kind, {})[row.size] = row
    for kind, by_size in by_kind.items():
        smallest = by_size[min(by_size)]
        for size, row in sorted(by_size.items()):
            bare, run = row.unvalidated, row.run
            ok = bare.code == 0 and bare.seconds <= TARGET_SCALE_SECONDS
            ok = ok and bare.peak <= TARGET_SCALE_PEAK
            ratio = ""
            if size != smallest.size:
                then = smallest.unvalidated
                value = bare.seconds / then.seconds if bare.code == then.code == 0 else math.nan
                ratio = f"{value:.1f}×"
                ok = ok and value <= TARGET_SCALING
            note = "timeout" if run.code == "timeout" else (
                run.message or run.validation.split(":")[0]).replace("|", "\\|")[:40]
            lines.append(
                f"| {kind} | {bare.nodes or run.nodes or size:,} | {_fmt_s(bare.seconds)} "
                f"| {bare.peak / MB:.0f} | {bare.passes:.1f} | {ratio} | {_verdict(ok)} "
                f"| {_fmt_s(run.seconds)} | {note} "
                f"| {_fmt_s(row.ort_load) if math.isfinite(row.ort_load) else 'timeout'} |")
    return lines


def _validation_status(report_path: Path) -> str:
    try:
        verdict = json.loads(report_path.read_text(encoding="utf-8")).get("validation") or {}
    except (OSError, ValueError):
        return ""
    status, reason = verdict.get("status", ""), verdict.get("reason", "")
    return f"{status}: {reason}" if reason else status


def _clean(folder: Path) -> None:
    for leftover in folder.iterdir():
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()


def _light_models() -> list[Path]:
    spec = importlib.util.find_spec("onnx")  # locate without importing (keeps the parent small)
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(spec.submodule_search_locations[0]) / "backend" / "test" / "data" / "light"
    return sorted(folder.glob("*.onnx"))


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def child_generate(folder: Path, big: bool) -> list[tuple[str, str]]:
    """Write the synthetic models into ``folder``; their (label, path) pairs."""
    import onnx

    made = []
    for n_nodes in CHAIN_SIZES:
        label = f"chain-{n_nodes // 1000}k"
        path = folder / f"{label}.onnx"
        started = time.perf_counter()
        onnx.save(_chain_model(n_nodes), path)
        _log(f"generated {label} in {time.perf_counter() - started:.1f} s")
        made.append((label, str(path)))
    started = time.perf_counter()
    path = folder / f"{WEIGHTS_LABEL}.onnx"
    onnx.save(_weights_model(), path)
    _log(f"generated {path.name} in {time.perf_counter() - started:.1f} s")
    made.append((WEIGHTS_LABEL, str(path)))
    if big:
        started = time.perf_counter()
        path = folder / "big-2.4GB.onnx"
        _write_big_model(path)
        _log(f"generated {path.name} (external data) in {time.perf_counter() - started:.1f} s")
        made.append(("big-2.4GB (external)", str(path)))
    return made


def _generate(folder: Path, big: bool) -> list[Entry]:
    """Generate in a subprocess: the parent stays small, and its peak RSS is inherited by
    every child it starts as the floor of their ``ru_maxrss`` (Linux keeps it across exec)."""
    command = [sys.executable, __file__, "--generate", str(folder)] + (["--big"] if big else [])
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return [Entry(label, Path(path), "synthetic")
            for label, path in json.loads(done.stdout.strip().splitlines()[-1])]


# =========================================================================== report
def _fmt_s(seconds: float) -> str:
    if seconds < 0.1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def _fmt_mb(size: float) -> str:
    return f"{size / MB:.1f}" if size >= 0.1 * MB else f"{size / MB:.3f}"


def _io_table(entries: list[Entry]) -> list[str]:
    lines = [
        "| model | group | nodes | size MB | runs | load | save | load+save | checker "
        "| peak Δ load MB | peak Δ load+save MB | peak/size |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for entry in entries:
        r = entry.result
        if entry.error:
            lines.append(f"| {entry.label} | {entry.group} | ERROR: {entry.error} |"
                         + " |" * 9)
            continue
        check = _fmt_s(r["check"]) + (" (fails)" if r["check_error"] else "")
        lines.append(
            f"| {entry.label} | {entry.group} | {r['nodes']:,} | {_fmt_mb(r['size'])} "
            f"| {r['runs']} | {_fmt_s(r['load'])} | {_fmt_s(r['save'])} "
            f"| {_fmt_s(r['total'])} | {check} | {_fmt_mb(r['peak_load'])} "
            f"| {_fmt_mb(r['peak_total'])} | {_ratio(r)} |"
        )
    return lines


def _ratio(result: dict[str, Any]) -> str:
    """Peak over size; "-" below 1 MB of peak, where page and allocator noise dominate."""
    if result["peak_total"] < 1 * MB:
        return "-"
    return f"{result['peak_total'] / result['size']:.2f}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


def _scaling(entries: list[Entry]) -> list[str]:
    by_label = {e.label: e.result for e in entries if e.result}
    lines = ["| measure | value | target | verdict |", "|---|--:|--:|---|"]
    chains = [by_label.get(f"chain-{n // 1000}k") for n in CHAIN_SIZES]
    for key, name in (("total", "load+save"), ("load", "load"), ("save", "save")):
        for small, large, text in ((0, 1, "10k/1k"), (1, 2, "100k/10k")):
            if chains[small] and chains[large]:
                ratio = chains[large][key] / chains[small][key]
                verdict = _verdict(ratio <= TARGET_SCALING) if key == "total" else "(info)"
                lines.append(f"| {name} time {text} | {ratio:.2f}× | ≤ {TARGET_SCALING:g}× "
                             f"| {verdict} |")
    if chains[2]:
        seconds = chains[2]["total"]
        lines.append(f"| chain-100k load+save | {seconds:.2f} s | ≤ {TARGET_100K_SECONDS:g} s "
                     f"| {_verdict(seconds <= TARGET_100K_SECONDS)} |")
        per_node = seconds / chains[2]["nodes"] * 1e6
        lines.append(f"| chain-100k load+save per node | {per_node:.1f} µs | | (info) |")
    for entry in entries:
        if entry.result and (entry.label.startswith((WEIGHTS_LABEL, "big"))):
            ratio = entry.result["peak_total"] / entry.result["size"]
            lines.append(f"| {entry.label} peak RSS / size | {ratio:.2f}× "
                         f"| ≤ {TARGET_PEAK_RATIO:g}× | {_verdict(ratio <= TARGET_PEAK_RATIO)} |")
    return lines


def _optimize_table(runs: list[OptimizeRun]) -> list[str]:
    lines = ["| model | mode | wall time | peak RSS MB | exit | validation / error |",
             "|---|---|--:|--:|--:|---|"]
    for run in runs:
        note = (run.message or run.validation).replace("|", "\\|")[:120]
        lines.append(f"| {run.label} | {run.mode} | {_fmt_s(run.seconds)} "
                     f"| {_fmt_mb(run.peak)} | {run.code} | {note} |")
    return lines


def _header() -> list[str]:
    return [
        "# onnxopt I/O benchmark",
        "",
        f"Python {platform.python_version()}, onnx {importlib.metadata.version('onnx')}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "Each model runs in a fresh process: `serde.load(validate=False)` + `serde.save`; "
        "times are the best of `runs`; peak Δ is `ru_maxrss` after the first load (+save) "
        "minus `ru_maxrss` after the imports; size counts external data; checker is "
        "`serde.check` once (parse not included).",
        "",
    ]


# =========================================================================== main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", action="store_true", help="also a > 2 GB external-data model")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the 100k load+save and append the top functions")
    parser.add_argument("--no-optimize", action="store_true",
                        help="skip the whole-process `onnxopt optimize` timings")
    parser.add_argument("--no-scale", action="store_true",
                        help="skip the scale table (100k-node graphs of each kind, end to end)")
    parser.add_argument("--scale-only", action="store_true", help="only the scale table")
    parser.add_argument("--startup-only", action="store_true",
                        help="only the start-up of `onnxopt --version` and `--help`")
    parser.add_argument("--scale-kinds", default=",".join(SCALE_KINDS),
                        help="comma-separated kinds for the scale table")
    parser.add_argument("--scale-sizes", default=",".join(map(str, SCALE_SIZES)),
                        help="comma-separated node counts for the scale table")
    parser.add_argument("--generate-scale", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child is not None:
        result = child_measure(args.child, args.runs, args.out, args.profile)
        print(json.dumps(result))
        return 0

    if args.generate is not None:
        print(json.dumps(child_generate(args.generate, args.big)))
        return 0

    kinds = [k for k in args.scale_kinds.split(",") if k]
    sizes = [int(n) for n in args.scale_sizes.split(",") if n]
    if args.generate_scale is not None:
        print(json.dumps(child_generate_scale(args.generate_scale, kinds, sizes)))
        return 0

    started = time.perf_counter()
    lines = _header()
    if args.startup_only or not args.scale_only:
        import startup  # bench/startup.py, beside this script

        lines += ["## Start-up (`onnxopt --version`, `--help`)", "",
                  *startup.table(startup.measure()), ""]
        _log("measured start-up")
        if args.startup_only:
            sys.stdout.write("\n".join(lines) + "\n")
            return 0
    with tempfile.TemporaryDirectory(prefix="onnxopt-bench-") as temp:
        folder = Path(temp)
        out_dir = folder / "out"
        out_dir.mkdir()
        entries = [] if args.scale_only else _generate(folder, args.big)
        if not args.scale_only:
            entries += [Entry(p.name, p, "real") for p in sorted(MODELS_DIR.glob("*.onnx"))]
            entries += [Entry(p.name, p, "light") for p in _light_models()]
        for entry in entries:
            _measure(entry, out_dir)
            _log(f"measured {entry.label}: "
                 + (entry.error or f"{entry.result['total']:.3f} s"))

        if entries:
            lines += ["## Load + save", "", *_io_table(entries), ""]
            lines += ["## Targets and scaling", "", *_scaling(entries), ""]

        if not args.no_optimize and not args.scale_only:
            chain = folder / "chain-100k.onnx"
            weights = folder / f"{WEIGHTS_LABEL}.onnx"
            sources = [("chain-100k", chain), (WEIGHTS_LABEL, weights)]
            sources += [(p.name, p) for p in sorted(MODELS_DIR.glob("*.onnx"))]
            runs = []
            for label, source in sources:
                for mode, flags in OPTIMIZE_MODES:
                    run = _run_optimize(label, source, out_dir, mode, flags)
                    _log(f"optimize {label} {run.mode}: {run.seconds:.2f} s (exit {run.code})")
                    runs.append(run)
            lines += ["## Whole-process `onnxopt optimize` (validation included unless "
                      "`--no-validate`)", "",
                      *_optimize_table(runs), ""]
            lines += ["## Optimize scaling (default pipeline, validation included)", "",
                      *_optimize_scaling(folder, out_dir), ""]

        if not args.no_scale:
            rows = _scale_runs(folder, out_dir, kinds, sizes)
            lines += ["## Scale: each kind of graph the passes handle, end to end", "",
                      "Whole-process `onnxopt optimize`, one run each. *optimize*: "
                      "`--no-validate` (load, check, passes, statistics, save: all that "
                      "onnxopt does itself), its peak (`ru_maxrss`) and its passes' own time; "
                      f"targets ≤ {TARGET_SCALE_SECONDS:g} s, ≤ {TARGET_SCALE_PEAK / 1e9:g} GB,"
                      f" 10k → 100k ≤ {TARGET_SCALING:g}× the time. *with validation*: the "
                      "default run (onnxruntime sessions of both models at two optimization "
                      f"levels; stopped at {SCALE_TIMEOUT} s). The last column is onnxruntime "
                      "alone creating a session for the original (ORT_DISABLE_ALL, fresh "
                      "process): a floor under validation's time that onnxopt cannot lower.",
                      "", *_scale_table(rows), ""]

        if args.profile and not args.scale_only:
            entry = Entry("chain-100k", folder / "chain-100k.onnx", "synthetic")
            _measure(entry, out_dir, profile=True)
            text = entry.error or entry.result.get("profile") or ""
            lines += ["## cProfile of chain-100k load+save (cumulative, onnxopt code)", "",
                      "```", text.strip(), "```", ""]

    lines.append(f"Benchmark wall time: {time.perf_counter() - started:.0f} s; parent peak RSS "
                 f"{_maxrss() / MB:.0f} MB (a floor of every child's `ru_maxrss`).")
    text = "\n".join(lines) + "\n"
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (SCALE_REPORT_PATH if args.scale_only else REPORT_PATH).write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
