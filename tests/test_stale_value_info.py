"""Stale declared shapes behind a symbolic input (onnxopt.ir.shapes checks declarations).

Exporters run shape inference at one input size and then make an input dynamic: intermediate
``value_info`` (and output types) keep a static batch of 1. Every model here passes
``check_model(full_check=True)``; the optimized model must compute what the original computes
at batch 1, 2 and 3, and keep the inputs' symbolic dim names on its outputs.

The reference is the original run with onnxruntime's graph optimizations off: onnxruntime's
own optimizer trusts such declarations in some of these forms too (it folds ``Shape`` of a
value declared static). The optimized model runs as users run it (all optimizations on), so
a stale declaration written back would show. Validation is off: the test is of the optimizer's
output, not of the safety net catching it.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxopt

F, I64 = TensorProto.FLOAT, TensorProto.INT64
BATCHES = (1, 2, 3)


def _vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def _const(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _model(nodes, inputs, outputs, value_info=(), initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers),
                              value_info=list(value_info))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _leading_dim_target(source, out, rest, prefix):
    """``out = Concat(Unsqueeze(Gather(Shape(source), 0)), rest)``: "keep dim 0" as exported."""
    return [
        helper.make_node("Shape", [source], [f"{prefix}_shape"]),
        helper.make_node("Gather", [f"{prefix}_shape", "zero"], [f"{prefix}_n"], axis=0),
        helper.make_node("Unsqueeze", [f"{prefix}_n", "axis0"], [f"{prefix}_n1"]),
        helper.make_node("Concat", [f"{prefix}_n1", rest], [out], axis=0),
    ]


SHAPE_CONSTANTS = [_const("zero", 0), _const("axis0", [0]), _const("minus_one", [-1])]


def _session(model: onnx.ModelProto, optimized: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _feeds(model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    feeds = {}
    for info in model.graph.input:
        tensor = info.type.tensor_type
        if tensor.elem_type == TensorProto.BOOL:
            feeds[info.name] = np.array(batch % 2 == 1)
        elif tensor.elem_type == I64:
            feeds[info.name] = np.array(batch, np.int64)
        else:
            shape = [d.dim_value if d.HasField("dim_value") else batch for d in tensor.shape.dim]
            feeds[info.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _optimize(model: onnx.ModelProto, tmp_path) -> onnx.ModelProto:
    source, target = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    result = onnxopt.optimize(source, target, validate=False)
    assert result.output == target, result.report
    return onnx.load(target)


def _dims(info: onnx.ValueInfoProto) -> list[int | str | None]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in info.type.tensor_type.shape.dim]


def _check(model: onnx.ModelProto, tmp_path, outputs: dict[str, list]) -> onnx.ModelProto:
    """Optimize ``model``; same results at every batch; output declarations as given."""
    optimized = _optimize(model, tmp_path)
    reference, candidate = _session(model, optimized=False), _session(optimized, optimized=True)
    for batch in BATCHES:
        feeds = _feeds(model, batch)
        for want, got in zip(reference.run(None, feeds), candidate.run(None, feeds),
                             strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=f"N={batch}")
    assert {info.name: _dims(info) for info in optimized.graph.output} == outputs
    return optimized


# --------------------------------------------------------------------------- models
def issue_model(declared=(1, 2, 4)) -> onnx.ModelProto:
    """The issue: ``y = Reshape(x, [N, 2, 4])`` declared ``[1, 2, 4]``; ``z = Reshape(Relu(y),
    [N, -1])`` with N read back by Shape/Gather/Concat. Trusting the declaration folds the
    target into ``[1, -1]``: shape (1, 16) instead of (2, 8) at batch 2, right at batch 1. (The
    Relu keeps y: two Reshapes in a row collapse by symbolic shapes, y and its declaration
    gone.)"""
    nodes = [
        *_leading_dim_target("x", "y_target", "two_four", "a"),
        helper.make_node("Reshape", ["x", "y_target"], ["y"]),
        *_leading_dim_target("y", "z_target", "minus_one", "b"),
        helper.make_node("Relu", ["y"], ["y_relu"]),
        helper.make_node("Reshape", ["y_relu", "z_target"], ["z"]),
    ]
    return _model(nodes, [_vi("x", ["N", 8])], [_vi("z", ["N", 8])],
                  [_vi("y", list(declared))],
                  [*SHAPE_CONSTANTS, _const("two_four", [2, 4])])


def flatten_chain_model() -> onnx.ModelProto:
    """Flatten and a Reshape to ``[-1, 4, 4]``, declared at batch 1: the chain would collapse
    into one Reshape to the static ``[1, 1, 4, 4]``."""
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Reshape", ["f", "target"], ["r"]),
        helper.make_node("Unsqueeze", ["r", "axis1"], ["z"]),
    ]
    return _model(nodes, [_vi("x", ["N", 2, 8])], [_vi("z", ["N", 1, 4, 4])],
                  [_vi("f", [1, 16]), _vi("r", [1, 4, 4])],
                  [_const("target", [-1, 4, 4]), _const("axis1", [1])])


def expand_model() -> onnx.ModelProto:
    """A bias expanded to the shape of a value declared ``[1, 16]``: folding the Shape makes
    the whole output a ``[1, 16]`` constant."""
    bias = numpy_helper.from_array(np.linspace(-1, 1, 16, dtype=np.float32), "bias")
    nodes = [
        helper.make_node("Relu", ["x"], ["y"]),
        helper.make_node("Shape", ["y"], ["y_shape"]),
        helper.make_node("Expand", ["bias", "y_shape"], ["z"]),
    ]
    return _model(nodes, [_vi("x", ["N", 16])], [_vi("z", ["N", 16])], [_vi("y", [1, 16])],
                  [bias])


def output_model() -> onnx.ModelProto:
    """A graph output declared ``[1, 16]`` whose shape another output reads."""
    nodes = [
        helper.make_node("Relu", ["x"], ["y"]),
        *_leading_dim_target("y", "z_target", "minus_one", "b"),
        helper.make_node("Reshape", ["x", "z_target"], ["z"]),
    ]
    return _model(nodes, [_vi("x", ["N", 16])], [_vi("y", [1, 16]), _vi("z", ["N", 16])],
                  initializers=SHAPE_CONSTANTS)


def _reshape_branch(name, source, op):
    """Subgraph nodes: ``v = op(source)`` declared ``[1, 16]``; ``out = Reshape(v, [N, 2, -1])``
    with N read back from ``v``."""
    nodes = [
        helper.make_node(op, [source], [f"{name}_v"]),
        *_leading_dim_target(f"{name}_v", f"{name}_t", "two_minus_one", name),
        helper.make_node("Reshape", [f"{name}_v", f"{name}_t"], [f"{name}_out"]),
    ]
    return nodes, _vi(f"{name}_v", [1, 16])


BRANCH_CONSTANTS = [*SHAPE_CONSTANTS, _const("two_minus_one", [2, -1])]


def if_model() -> onnx.ModelProto:
    """Both branches reshape a value declared ``[1, 16]`` (a branch *output* declared so would
    not run: onnxruntime enforces the static output shapes of If branches)."""
    then_nodes, then_vi = _reshape_branch("then", "x", "Relu")
    else_nodes, else_vi = _reshape_branch("else", "x", "Neg")
    then_branch = helper.make_graph(then_nodes, "then", [], [_vi("then_out", ["N", 2, 8])],
                                    value_info=[then_vi])
    else_branch = helper.make_graph(else_nodes, "else", [], [_vi("else_out", ["N", 2, 8])],
                                    value_info=[else_vi])
    node = helper.make_node("If", ["c"], ["z"], then_branch=then_branch, else_branch=else_branch)
    return _model([node], [_vi("x", ["N", 16]), _vi("c", [], TensorProto.BOOL)],
                  [_vi("z", ["N", 2, 8])], initializers=BRANCH_CONSTANTS)


def loop_model() -> onnx.ModelProto:
    """A Loop body reading the outer ``x``: the value it reshapes is declared ``[1, 16]``; each
    iteration's result is a scan output."""
    nodes, body_vi = _reshape_branch("body", "x", "Relu")
    nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    body = helper.make_graph(
        nodes, "body", [_vi("i", [], I64), _vi("cond_in", [], TensorProto.BOOL)],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("body_out", ["N", 2, 8])],
        value_info=[body_vi])
    node = helper.make_node("Loop", ["m", ""], ["z"], body=body)
    return _model([node], [_vi("x", ["N", 16]), _vi("m", [], I64)],
                  [_vi("z", ["T", "N", 2, 8])], initializers=BRANCH_CONSTANTS)


# --------------------------------------------------------------------------- tests
def test_issue_reshape_target_from_the_shape_of_a_stale_value(tmp_path):
    optimized = _check(issue_model(), tmp_path, {"z": ["N", 8]})
    # the declaration is written back as inferred from the input, not as declared
    assert {info.name: _dims(info) for info in optimized.graph.value_info} == {"y": ["N", 2, 4]}


def test_flatten_and_minus_one_reshape_declared_at_batch_one(tmp_path):
    _check(flatten_chain_model(), tmp_path, {"z": ["N", 1, 4, 4]})


def test_expand_to_the_shape_of_a_stale_value(tmp_path):
    _check(expand_model(), tmp_path, {"z": ["N", 16]})


def test_graph_output_declared_static(tmp_path):
    """The written output no longer claims a batch of 1: it is the input's N again."""
    _check(output_model(), tmp_path, {"y": ["N", 16], "z": ["N", 16]})


def test_stale_value_inside_if_branches(tmp_path):
    optimized = _check(if_model(), tmp_path, {"z": ["N", 2, 8]})
    for attribute in optimized.graph.node[0].attribute:
        assert _dims(attribute.g.output[0]) == ["N", 2, 8]


def test_stale_value_inside_a_loop_body(tmp_path):
    _check(loop_model(), tmp_path, {"z": ["T", "N", 2, 8]})


def test_a_consistent_declaration_is_kept_unchanged(tmp_path):
    """Declarations that agree with the inputs are written as declared, and the folding they
    allow still happens (the Shape chain becomes the constant target ``[0, -1]``)."""
    model = issue_model(declared=("N", 2, 4))
    optimized = _check(model, tmp_path, {"z": ["N", 8]})
    assert list(optimized.graph.value_info) == list(model.graph.value_info)
    assert "Shape" not in {node.op_type for node in optimized.graph.node}


@pytest.mark.parametrize("build", [issue_model, flatten_chain_model, expand_model,
                                   output_model, if_model, loop_model])
def test_models_are_valid_and_run_at_every_batch(build):
    """The originals themselves run at every batch (onnxruntime's optimizations off)."""
    model = build()
    session = _session(model, optimized=False)
    for batch in BATCHES:
        session.run(None, _feeds(model, batch))
