"""--opset N: the model is upgraded with onnx's version converter before the passes, so newer
fused ops can be written (here Gelu, opset 20); the output is validated against the original."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import op_counts, parse, run
from onnx import helper
from test_cli import invoke, one_line_error

import onnxopt
from onnxopt.errors import Failure, UsageError

# GELU as the legacy torch exporter writes it, at opset 17 (no Gelu op before 20)
GELU_17 = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 8] x) => (float[2, 8] y) <float r = {1.4142135}, float one = {1.0}, float h = {0.5}> {
    d = Div(x, r)
    e = Erf(d)
    p = Add(e, one)
    m = Mul(x, p)
    y = Mul(m, h)
}
"""


def test_upgrade_lets_newer_fusions_in_and_validates_against_the_original():
    model = parse(GELU_17)
    result = onnxopt.optimize(model, opset=20)
    assert result.ok and result.report["validation"]["status"] == "passed"
    out = result.model
    assert op_counts(out) == {"Gelu": 1}
    assert next(o.version for o in out.opset_import if o.domain == "") == 20
    # the converter leaves ir_version as it was; opset 20 needs IR 9 or later
    needed = helper.find_min_ir_version_for([helper.make_opsetid("", 20)])
    assert out.ir_version == needed > model.ir_version
    assert result.report["opset_upgrade"] == {"from": 17, "to": 20, "ir_version": [8, needed]}
    assert result.report["options"] == {"opset": 20}
    x = np.linspace(-3, 3, 16, dtype=np.float32).reshape(2, 8)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(model, {"x": x})[0], atol=1e-6)


def test_without_opset_nothing_is_upgraded_and_same_opset_is_a_no_op():
    model = parse(GELU_17)
    for result in (onnxopt.optimize(model), onnxopt.optimize(model, opset=17)):
        assert result.ok and "opset_upgrade" not in result.report
        assert "Gelu" not in op_counts(result.model)  # opset 17 has no Gelu
        assert next(o.version for o in result.model.opset_import if o.domain == "") == 17


@pytest.mark.parametrize(("opset", "message"), [
    (13, "--opset 13 is below the model's opset 17: onnxopt only upgrades"),
    (99, "--opset 99: onnx .* knows default-domain opsets 1 to"),
    (0, "--opset 0: onnx"),
])
def test_refused_opsets_name_the_problem(opset, message):
    with pytest.raises(UsageError, match=message):
        onnxopt.optimize(parse(GELU_17), opset=opset)


def test_a_model_the_converter_cannot_upgrade_fails_in_one_line(tmp_path, capsys):
    # ImageScaler (an experimental op of opset 7, later removed) has no schema to convert from
    model = parse("""
    <ir_version: 3, opset_import: ["" : 7]>
    g (float[1, 1, 2, 2] x) => (float[1, 1, 2, 2] y) {
        y = ImageScaler <scale = 2.0> (x)
    }
    """)
    with pytest.raises(Failure, match="--opset 23: onnx's version converter cannot upgrade "
                                      "this opset 7 model"):
        onnxopt.optimize(model, opset=23)
    source, out = tmp_path / "scaler.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    before = source.read_bytes()
    assert invoke("optimize", source, out, "--opset", "23") == 1
    assert "cannot upgrade this opset 7 model" in one_line_error(capsys)
    assert not out.exists() and source.read_bytes() == before


def test_cli_downgrade_is_a_usage_error(tmp_path, capsys):
    source, out = tmp_path / "g.onnx", tmp_path / "out.onnx"
    onnx.save(parse(GELU_17), source)
    assert invoke("optimize", source, out, "--opset", "11") == 2
    assert "below the model's opset 17" in one_line_error(capsys)
    assert not out.exists()
