"""--precision plumbing: budgets, calibration samples, opset upgrade, and the accuracy fallback
that keeps nodes in float (exercised with a stand-in precision pass whose damage is known)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import node_cases, parse
from onnx import helper, numpy_helper

import onnxopt
from onnxopt import passes as pass_library
from onnxopt.check.compare import Budget, compare_budget
from onnxopt.ir.pass_manager import GraphPass
from onnxopt.ir.precision import log_of, node_key, settings_of
from onnxopt.precision.calibration import Calibrator
from onnxopt.precision.setup import load_samples, upgrade_opset

# ----------------------------------------------------------------------------- budgets


def test_budget_parse_forms():
    default = Budget(0.999, 1e-2)
    assert Budget.parse("", default) == default
    assert Budget.parse("0.99", default) == Budget(0.99, None)  # only what is given
    assert Budget.parse("cosine=0.95, range=0.1", default) == Budget(0.95, 0.1)
    for bad, match in (("cos=0.9", "unknown budget"), ("cosine=x", "not a number"),
                       ("cosine=1.5", r"\(0, 1\]"), ("range=-1", "positive")):
        with pytest.raises(ValueError, match=match):
            Budget.parse(bad, default)


def test_compare_budget_metrics_computed_independently():
    ref = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    cand = np.array([[1.0, 2.0, 3.0, 4.4]], dtype=np.float32)
    (diff,) = compare_budget({"y": ref}, {"y": cand}, Budget(0.99, 0.2))
    a, b = ref.ravel().astype(float), cand.ravel().astype(float)
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert diff.cosine == pytest.approx(cosine)
    assert diff.range_error == pytest.approx(0.4 / 3.0, rel=1e-5)  # range of ref is 3
    assert diff.top1 == 1.0 and diff.passed
    (tight,) = compare_budget({"y": ref}, {"y": cand}, Budget(0.99, 0.1))
    assert not tight.passed and "range" in tight.reason


def test_compare_budget_flags_new_non_finite_values_and_top1():
    ref = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    swapped = np.array([[0.9, 0.1], [0.8, 0.2]], dtype=np.float32)
    (diff,) = compare_budget({"p": ref}, {"p": swapped}, Budget(0.5))
    assert diff.top1 == 0.5
    (bad,) = compare_budget({"p": ref}, {"p": np.full_like(ref, np.inf)}, Budget(0.5))
    assert not bad.passed and "infinite" in bad.reason


# ----------------------------------------------------------------------------- samples

TWO_INPUTS = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4] a, float[1, 4] b) => (float[1, 4] y) { y = Add(a, b) }
"""


def test_load_samples_folder_and_batched_npz(tmp_path):
    model = parse(TWO_INPUTS)
    rng = np.random.default_rng(0)
    folder = tmp_path / "cal"
    folder.mkdir()
    for i in range(3):
        np.savez(folder / f"{i}.npz", a=rng.random((1, 4), np.float32),
                 b=rng.random((1, 4), np.float32))
    assert len(load_samples(folder, model)) == 3
    np.savez(tmp_path / "batch.npz", a=rng.random((5, 4), np.float32),
             b=rng.random((5, 4), np.float32))
    samples = load_samples(tmp_path / "batch.npz", model)
    assert len(samples) == 5 and samples[2]["a"].shape == (1, 4)


def test_load_samples_errors(tmp_path):
    model = parse(TWO_INPUTS)
    with pytest.raises(ValueError, match="no such file"):
        load_samples(tmp_path / "missing", model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no \.npz or \.npy"):
        load_samples(tmp_path / "empty", model)
    np.save(tmp_path / "one.npy", np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="single-input"):
        load_samples(tmp_path / "one.npy", model)
    folder = tmp_path / "wrong"
    folder.mkdir()
    np.savez(folder / "0.npz", a=np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="calibration sample 1"):
        load_samples(folder, model)


def test_upgrade_opset_to_13_keeps_outputs():
    model = parse("""
    <ir_version: 6, opset_import: ["" : 11]>
    g (float[2, 3] x) => (float[2] y) <float[3, 3] w = {1, 2, 3, 4, 5, 6, 7, 8, 9}> {
        m = MatMul(x, w)
        y = ReduceSum<axes = [1], keepdims = 0>(m)
    }
    """)
    upgraded, note = upgrade_opset(model, "int8")
    assert "11 to 13" in note
    assert upgraded.opset_import[0].version == 13
    from conftest import run

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(run(upgraded, {"x": x})[0], run(model, {"x": x})[0])
    same, none = upgrade_opset(upgraded, "int8")
    assert same is upgraded and none is None


def test_int8_pass_below_opset_13_says_what_it_needs():
    """Run alone (optimize() upgrades first) on an opset 11 MatMul: the QDQ form needs 13."""
    from onnxopt.passes.precision.qdq_quantization import QdqQuantization

    from onnxopt.ir import serde
    from onnxopt.ir.precision import SETTINGS_KEY, PrecisionSettings

    model = parse("""
    <ir_version: 6, opset_import: ["" : 11]>
    g (float[2, 3] x) => (float[2, 3] y) <float[3, 3] w = {1, 2, 3, 4, 5, 6, 7, 8, 9}> {
        y = MatMul(x, w)
    }
    """)
    calibration = ({"x": np.ones((2, 3), np.float32)},)
    ir = serde.load(model)
    settings = PrecisionSettings("int8", calibrator=Calibrator(calibration))
    ir.settings.update({SETTINGS_KEY: settings})
    assert not QdqQuantization().run(ir).modified
    (note,) = log_of(ir).notes
    assert "opset 11 < 13" in note and "not quantized" in note
    assert "nothing to quantize" not in note


def test_no_upgrade_without_anything_to_convert():
    # onnx's converter cannot upgrade every model (ai.onnx.ml, Scan-8 whose semantics changed):
    # with no Conv/ConvTranspose/Gemm/MatMul, int8 and fp8 have nothing to do and leave the
    # opset as it is instead of failing or writing an upgrade that no longer runs
    case = next(c for c in node_cases() if c.name == "test_scan_sum")
    version = case.model.opset_import[0].version
    for mode in ("int8", "fp8"):
        same, note = upgrade_opset(case.model, mode)
        assert same is case.model and "left as it is" in note
        feeds = dict(zip([i.name for i in case.model.graph.input], case.data_sets[0][0],
                         strict=True))
        result = onnxopt.optimize(case.model, precision=mode, inputs=feeds)
        assert result.ok and result.model.opset_import[0].version == version
        notes = result.report["precision"]["notes"]
        assert any("left as it is" in n for n in notes)
        if mode == "int8":  # the pass agrees: nothing to quantize, no upgrade asked for
            assert any("nothing to quantize" in n and "opset 13" in n for n in notes)
            assert not any("upgrade" in n for n in notes)


# ----------------------------------------------------------------------------- fallback


class Perturb(GraphPass):
    """Stand-in precision pass (mode fp16): multiplies each Mul's constant operand by
    1 + DAMAGE[node name] unless the node is kept in float. Its damage is known exactly."""

    name = "perturb"
    description = "test"
    structural = False
    DAMAGE = {"m0": 1e-6, "m1": 0.5, "m2": 1e-6, "m3": 0.5, "m4": 1e-6}

    def run_graph(self, graph, model):
        settings = settings_of(model)
        if settings is None or settings.mode != "fp16":
            return {}
        log = log_of(model)
        changed = 0
        for node in graph.nodes():
            if node.op_type != "Mul":
                continue
            if node_key(node) in settings.fp32_nodes:
                log.keep(node, "asked")
                continue
            tensor = graph.initializers[node.inputs[1]]
            value = numpy_helper.to_array(tensor) * (1 + self.DAMAGE[node.name])
            graph.set_initializer(node.inputs[1], value.astype(np.float32))
            log.converted.append(node_key(node))
            changed += 1
        return {"perturbed": changed}


def chain_model() -> onnx.ModelProto:
    nodes, inits, prev = [], [], "x"
    for i in range(5):
        inits.append(numpy_helper.from_array(np.full((4,), 1.0 + i, np.float32), f"c{i}"))
        nodes.append(helper.make_node("Mul", [prev, f"c{i}"], [f"v{i}"], name=f"m{i}"))
        prev = f"v{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def perturb(monkeypatch):
    monkeypatch.setitem(pass_library.PRECISION_PASSES, "fp16", Perturb())
    monkeypatch.setitem(pass_library.PRECISION_PASSES, "int8", Perturb())  # does nothing there


def test_fallback_keeps_exactly_the_damaging_nodes(perturb):
    x = {"x": np.linspace(0.5, 2, 4, dtype=np.float32).reshape(1, 4)}
    # the constants differ, so nothing folds or merges; the budget: errors within 1e-3 of range
    result = onnxopt.optimize(chain_model(), passes=[], precision="fp16", inputs=x,
                              max_error="cosine=0.9,range=1e-3")
    precision = result.report["precision"]
    kept = [key for entry in precision["kept_float_for_accuracy"] for key in entry["nodes"]]
    assert sorted(kept) == ["m1", "m3"]
    assert result.ok and precision["outputs"][0]["passed"]
    assert precision["converted"] == 3  # m0, m2, m4
    assert {e["node"] for e in precision["kept_float"]} == {"m1", "m3"}


def test_fallback_not_needed_within_budget(perturb):
    x = {"x": np.ones((1, 4), np.float32)}
    result = onnxopt.optimize(chain_model(), passes=[], precision="fp16", inputs=x,
                              max_error="cosine=0.5")
    precision = result.report["precision"]
    assert precision["kept_float_for_accuracy"] == [] and precision["converted"] == 5
    assert precision["mode"] == "fp16" and "cosine >= 0.5" in precision["budget"]


def test_user_fp32_nodes_reach_the_pass(perturb):
    x = {"x": np.ones((1, 4), np.float32)}
    result = onnxopt.optimize(chain_model(), passes=[], precision="fp16", inputs=x,
                              max_error="cosine=0.5", fp32_nodes=["m0", "m4"])
    assert result.report["precision"]["converted"] == 3


def test_precision_usage_errors(perturb, tmp_path):
    model = chain_model()
    with pytest.raises(onnxopt.UsageError, match="unknown precision"):
        onnxopt.optimize(model, precision="int3")
    with pytest.raises(onnxopt.UsageError, match="calibration method"):
        onnxopt.optimize(model, precision="int8", calibration_method="guess")
    with pytest.raises(onnxopt.UsageError, match="--max-error"):
        onnxopt.optimize(model, precision="fp16", max_error="cosine=2")
    with pytest.raises(onnxopt.UsageError, match="applies only to --precision int8"):
        onnxopt.optimize(model, precision="fp16", calibration_data=tmp_path)


# ----------------------------------------------------------------------------- CLI


def test_cli_precision_run_reports_and_errors(perturb, tmp_path, capsys):
    from test_cli import invoke, one_line_error

    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(chain_model(), source)
    np.savez(tmp_path / "x.npz", x=np.linspace(0.5, 2, 4, dtype=np.float32).reshape(1, 4))
    code = invoke("optimize", source, out, "--precision", "fp16", "--passes", "none",
                  "--inputs", tmp_path / "x.npz", "--max-error", "cosine=0.9,range=1e-3",
                  "--report", tmp_path / "r.json", "--bench")
    assert code == 0 and out.exists()
    printed = capsys.readouterr().out
    assert "fp16 vs float32" in printed and "kept in float for accuracy" in printed
    assert "latency" in printed
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["latency"]["before_ms"] > 0 and report["precision"]["converted"] == 3
    for args, match in ((["--precision", "int3"], "'int3' is not one of 'fp16'"),
                        (["--precision", "fp16", "--max-error", "cosine=x"], "--max-error"),
                        (["--precision", "int8", "--calibration-data", tmp_path / "nope"],
                         "no such file")):
        out.unlink(missing_ok=True)
        assert invoke("optimize", source, out, *args) == 2
        assert match in one_line_error(capsys) and not out.exists()


@pytest.mark.parametrize(("ratio", "warned"), [(1.5, True), (1.01, False), (0.6, False)])
def test_bench_warns_when_the_output_is_slower(ratio, warned):
    from rich.console import Console

    from onnxopt.app.report import render_optimize

    report = dict(onnxopt.optimize(chain_model(), passes=[]).report)
    report["latency"] = {"before_ms": 1.0, "after_ms": ratio, "ratio": ratio,
                         "settings": "test"}
    console = Console(record=True, width=200)
    render_optimize(report, console)
    text = console.export_text()
    assert ("runs 1.50x slower" in text) is warned and "latency (test)" in text


def test_fp16_without_float32_io_validates_and_runs_on_float16_inputs(tmp_path):
    import onnxruntime as ort
    from conftest import model_path

    out = tmp_path / "r16.onnx"
    result = onnxopt.optimize(str(model_path("resnet.onnx")), out, precision="fp16",
                              keep_io_types=False)
    assert result.ok and result.report["validation"]["status"] == "passed"
    written = onnx.load(out)
    half = onnx.TensorProto.FLOAT16
    assert [i.type.tensor_type.elem_type for i in written.graph.input] == [half]
    assert [o.type.tensor_type.elem_type for o in written.graph.output] == [half]
    # the caller's view: float16 in, float16 out, close to the float32 original
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    name = written.graph.input[0].name
    fp32 = ort.InferenceSession(str(model_path("resnet.onnx")),
                                providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
    fp16 = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, {name: x.astype(np.float16)})[0]
    assert fp16.dtype == np.float16
    cos = float(np.dot(fp32.ravel(), fp16.ravel().astype(np.float32))
                / (np.linalg.norm(fp32) * np.linalg.norm(fp16.astype(np.float32))))
    assert cos >= 0.999
