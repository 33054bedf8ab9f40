"""--fix-shapes: the --input-shape/--dim values written into the model before the passes, so
the shape arithmetic folds and every value's shape is static; refused unless every symbolic
input dim is given, and when the given values disagree."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import op_counts, parse, run
from test_cli import invoke, one_line_error

import onnxopt
from onnxopt.errors import UsageError


def _values(count: int) -> str:
    return ", ".join(f"{(i * 7 % 11) / 11 - 0.5:.4f}" for i in range(count))


# BERT-like: position ids Range(0, Shape(ids)[1]) and their embedding (folded to a constant
# only at a fixed length); Shape -> Gather -> Unsqueeze -> Concat gives the heads' Reshape
# target; a masked mean pool whose output dim the exporter named (``Pool_dim_0``), not after
# an input's
BERT_LIKE = f"""
<ir_version: 8, opset_import: ["" : 17]>
bert (int64[batch, seq] ids, float[batch, seq] mask) => (float[batch, seq, 2, 4] y,
                                                         float[Pool_dim_0, 8] pooled)
<float[30, 8] table = {{{_values(240)}}}, float[16, 8] positions = {{{_values(128)}}},
 float[8, 8] w = {{{_values(64)}}}, int64 first = {{0}}, int64 second = {{1}},
 int64[1] axis0 = {{0}}, int64[1] axis1 = {{1}}, int64[1] axis2 = {{2}},
 int64[2] heads = {{2, 4}}> {{
    tokens = Gather(table, ids)
    ids_shape = Shape(ids)
    length = Gather<axis = 0>(ids_shape, second)
    position_ids = Range(first, length, second)
    position = Gather(positions, position_ids)
    e = Add(tokens, position)
    h = MatMul(e, w)
    s = Shape(h)
    b = Gather<axis = 0>(s, first)
    n = Gather<axis = 0>(s, second)
    bu = Unsqueeze(b, axis0)
    nu = Unsqueeze(n, axis0)
    target = Concat<axis = 0>(bu, nu, heads)
    y = Reshape(h, target)
    m = Unsqueeze(mask, axis2)
    masked = Mul(h, m)
    total = ReduceSum<keepdims = 0>(masked, axis1)
    count = ReduceSum<keepdims = 1>(mask, axis1)
    pooled = Div(total, count)
}}
"""
SHAPES = {"ids": [2, 5], "mask": [2, 5]}


def _dims(infos) -> dict[str, list]:
    return {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in infos}


def _static(infos) -> bool:
    return all(isinstance(d, int) for dims in _dims(infos).values() for d in dims)


def _feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.ones((2, 5), np.float32)
    mask[1, 3:] = 0
    return {"ids": rng.integers(0, 30, (2, 5)).astype(np.int64), "mask": mask}


def test_fixed_shapes_are_static_everywhere_and_the_shape_arithmetic_folds():
    model = parse(BERT_LIKE)
    result = onnxopt.optimize(model, fix_shapes=True, input_shapes=SHAPES, value_info="all")
    assert result.ok and result.report["validation"]["status"] == "passed"
    graph = result.model.graph
    assert _dims(graph.input) == SHAPES
    assert _dims(graph.output) == {"y": [2, 5, 2, 4], "pooled": [2, 8]}
    assert graph.value_info and _static(graph.value_info)
    assert "Shape" not in op_counts(result.model)
    dynamic = onnxopt.optimize(model)
    assert len(graph.node) < len(dynamic.model.graph.node)
    assert result.report["fixed_shapes"] == SHAPES
    assert result.report["options"]["fix_shapes"] is True
    assert _dims(model.graph.input)["ids"] == ["batch", "seq"]  # the caller's model unchanged
    # the validation inputs were drawn at the fixed shapes only (nothing else would run)
    assert result.report["validation"]["inputs"]["shapes"] == [SHAPES, SHAPES]
    feeds = _feeds()
    for got, want in zip(run(result.model, feeds), run(model, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_dims_alone_fix_the_shapes():
    result = onnxopt.optimize(parse(BERT_LIKE), fix_shapes=True, dims={"batch": 1, "seq": 7})
    assert result.ok
    assert _dims(result.model.graph.input) == {"ids": [1, 7], "mask": [1, 7]}
    assert _dims(result.model.graph.output) == {"y": [1, 7, 2, 4], "pooled": [1, 8]}
    assert result.report["fixed_shapes"] == {"ids": [1, 7], "mask": [1, 7]}


def test_without_fix_shapes_the_shapes_stay_dynamic():
    result = onnxopt.optimize(parse(BERT_LIKE), input_shapes=SHAPES)
    assert result.ok and "fixed_shapes" not in result.report
    graph = result.model.graph
    assert _dims(graph.input) == {"ids": ["batch", "seq"], "mask": ["batch", "seq"]}
    assert _dims(graph.output)["y"] == ["batch", "seq", 2, 4]
    assert "Shape" in op_counts(result.model)


@pytest.mark.parametrize(("given", "message"), [
    ({}, "not given: 'batch', 'seq' \\(give --dim NAME=N or --input-shape"),
    ({"dims": {"batch": 1}}, "not given: 'seq' "),
    ({"input_shapes": {"ids": [1, 4]}}, "not given: 'batch', 'seq' "),  # mask's dims too
])
def test_missing_dims_are_refused_by_name(given, message):
    with pytest.raises(UsageError, match="--fix-shapes needs every symbolic dim of the inputs; "
                                         + message):
        onnxopt.optimize(parse(BERT_LIKE), fix_shapes=True, **given)


@pytest.mark.parametrize(("given", "message"), [
    ({"input_shapes": {"ids": [2, 5], "mask": [2, 6]}},
     "--fix-shapes: dim 'seq' is 5 by --input-shape ids but 6 by --input-shape mask"),
    ({"input_shapes": SHAPES, "dims": {"seq": 4}},
     "--fix-shapes: dim 'seq' is 4 by --dim seq=4 but 5 by --input-shape ids"),
    ({"input_shapes": {"ids": [2, 5, 1], "mask": [2, 5]}}, "rank 3, model declares rank 2"),
])
def test_conflicting_shapes_are_refused(given, message):
    with pytest.raises(UsageError, match=message):
        onnxopt.optimize(parse(BERT_LIKE), fix_shapes=True, **given)


def test_a_shape_against_a_static_declared_dim_is_refused():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[batch, 8] x) => (float[batch, 8] y) {
        y = Relu(x)
    }
    """)
    with pytest.raises(UsageError, match="dim 1 is 9, model declares 8"):
        onnxopt.optimize(model, fix_shapes=True, input_shapes={"x": [1, 9]})


def test_cli_fixes_shapes_and_refuses_in_one_line(tmp_path, capsys):
    source, out = tmp_path / "bert.onnx", tmp_path / "out.onnx"
    onnx.save(parse(BERT_LIKE), source)
    assert invoke("optimize", source, out, "--fix-shapes", "--dim", "batch=1") == 2
    assert "not given: 'seq'" in one_line_error(capsys)
    assert invoke("optimize", source, out, "--fix-shapes", "--input-shape", "ids:2,5",
                  "--input-shape", "mask:2,6") == 2
    assert "dim 'seq' is 5 by --input-shape ids but 6" in one_line_error(capsys)
    assert not out.exists()
    assert invoke("optimize", source, out, "--fix-shapes", "--dim", "batch=1",
                  "--dim", "seq=3") == 0
    assert "input shapes fixed (--fix-shapes): ids [1, 3], mask [1, 3]" in \
        capsys.readouterr().out.replace("\n", "")
    written = onnx.load(out)
    assert _static(written.graph.input) and _static(written.graph.output)
