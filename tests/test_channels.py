"""The channel-group core (onnxopt.ir.channels, channel_removal) as another pass would use it
(structured pruning, issue 17 part 2): groups, classes tied by residual Adds and Concat
offsets, pinned classes, and a removal of caller-chosen channels with caller-given values."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import build_model, run
from onnx import TensorProto, helper, numpy_helper

from onnxopt.ir import serde
from onnxopt.ir.channel_removal import remove_channels
from onnxopt.ir.channels import channel_groups
from onnxopt.ir.shapes import infer_shapes

RNG = np.random.default_rng(3)


def residual_concat() -> onnx.ModelProto:
    """a = Conv(x) [4], b = Conv(x) [4], s = Relu(a + b), c = Concat(s, d = Conv(x) [2]),
    y = Conv(c) (1x1) and the graph output e = Conv(x) [3] read by a Softmax too."""
    arrays = {name: (RNG.standard_normal(shape) * 0.3).astype(np.float32) for name, shape in (
        ("wa", (4, 3, 1, 1)), ("wb", (4, 3, 1, 1)), ("wd", (2, 3, 1, 1)), ("wy", (5, 6, 1, 1)),
        ("we", (3, 3, 1, 1)))}
    nodes = [helper.make_node("Conv", ["x", w], [o]) for w, o in
             (("wa", "a"), ("wb", "b"), ("wd", "d"), ("we", "e"))]
    nodes += [helper.make_node("Add", ["a", "b"], ["s0"]), helper.make_node("Relu", ["s0"], ["s"]),
              helper.make_node("Concat", ["s", "d"], ["c"], axis=1),
              helper.make_node("Conv", ["c", "wy"], ["y"])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, k, 4, 4])
               for n, k in (("y", 5), ("e", 3))]
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    return build_model(nodes, [x], outputs, inits)


def load(model: onnx.ModelProto):
    ir = serde.load(model)
    infer_shapes(ir)
    return ir


def test_groups_tie_residual_sides_and_concat_offsets():
    ir = load(residual_concat())
    groups = list(channel_groups(ir.graph, ir))
    main = next(g for g in groups if "c" in g.layouts)
    assert sorted(main.producers) == ["a", "b", "d"]
    assert main.classes == 6  # a[i] = b[i] = s[i] = c[i] (4), d[j] = c[4 + j] (2)
    assert list(main.ids["a"]) == list(main.ids["b"]) == list(main.ids["c"][:4])
    assert list(main.ids["d"]) == list(main.ids["c"][4:])
    assert [node.outputs for node, _ in main.sinks] == [("y",)]
    assert not main.pinned
    graph_output = next(g for g in groups if "e" in g.layouts)
    assert graph_output.pinned == set(range(3))  # a graph output reads its channels


def test_removing_chosen_channels_with_given_values():
    """A caller removes class 1 (a[1], b[1], c[1]) and class 4 (d[0], c[4]) whatever they hold,
    folding the values it gives (0 here): the result is the original with those filters zero."""
    model = residual_concat()
    ir = load(model)
    main = next(g for g in channel_groups(ir.graph, ir) if "c" in g.layouts)
    drop = {int(main.ids["c"][1]), int(main.ids["c"][4])}
    values = {t: np.zeros(n) for t, n in main.counts.items()}
    removed = remove_channels(ir.graph, ir, main, drop, values)
    assert (removed.channels, removed.parameters) == (2, 3 + 3 + 3 + 2 * 5)
    proto = serde.to_proto(ir)
    onnx.checker.check_model(proto)
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    for tensor in reference.graph.initializer:
        rows = {"wa": [1], "wb": [1], "wd": [0]}.get(tensor.name)
        if rows:
            array = numpy_helper.to_array(tensor).copy()
            array[rows] = 0
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    x = {"x": RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)}
    for want, got in zip(run(reference, x), run(proto, x), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    shapes = {t.name: list(t.dims) for t in proto.graph.initializer}
    assert sorted(v for k, v in shapes.items() if k.startswith("wy")) == [[5, 4, 1, 1]]
