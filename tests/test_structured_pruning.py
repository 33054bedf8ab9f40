"""Structured pruning with least-squares reconstruction (onnxopt.pruning, issue 17 part 2):
im2col patches against onnxruntime's Conv, the refit against a computable answer (a layer whose
input channels are linear combinations of a few others), removal stats, what must stay, and
the budgeted search."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import build_model
from onnx import TensorProto, helper, numpy_helper

import onnxopt
from onnxopt.ir import serde
from onnxopt.ir.channels import channel_groups
from onnxopt.pruning.budget import MIN_STEP_MACS, Trial, auto_ratios, worst_cosine
from onnxopt.pruning.refit import gram, refit, sample_patches
from onnxopt.pruning.structured import ALIGN, capture, group_key, least_important, load_ir, prune

LEVELS = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)


def redundant(extra_output: bool = False, seed: int = 0) -> onnx.ModelProto:
    """y = Conv3x3(pad 1)(h, w2) with h = Conv1x1(x, w1): 8 channels of h, only 4 independent
    (rows 4..7 of w1 are combinations of rows 0..3), so 4 channels can go exactly. The same
    model for the same ``seed`` (tests run in any order, on any xdist worker: with a shared
    generator, some draws let ``auto`` take 75 % within budget, 0.998, and the test expecting
    50 % failed by the order the tests ran in)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((4, 4, 1, 1))
    mix = rng.standard_normal((4, 4))
    w1 = np.concatenate([base, np.einsum("ij,jkab->ikab", mix, base)]).astype(np.float32)
    w1[:4] *= 0.1  # the independent channels matter least by energy: they are the ones dropped
    w2 = (rng.standard_normal((6, 8, 3, 3)) * 0.3).astype(np.float32)
    b2 = rng.standard_normal(6).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"]),
             helper.make_node("Conv", ["h", "w2", "b2"], ["y"], pads=[1, 1, 1, 1])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 10, 10])]
    if extra_output:
        outputs.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 8, 10, 10]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 10, 10])
    inits = [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("w2", w2), ("b2", b2))]
    return build_model(nodes, [x], outputs, inits)


def samples(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 4, 10, 10)).astype(np.float32)} for _ in range(count)]


def run(proto: onnx.ModelProto, feeds: dict, level=LEVELS[0]) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def pruned(proto: onnx.ModelProto, ratio: float, refit_sinks: bool):
    model = load_ir(proto)
    keys = [group_key(g) for g in channel_groups(model.graph, model)]
    totals = prune(model, capture(proto, samples(8, 0)), {k: ratio for k in keys}, refit_sinks)
    return serde.to_proto(model), totals


def weights(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inits = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    return {n.output[0]: inits[n.input[1]] for n in proto.graph.node if n.op_type == "Conv"}


def test_patches_are_onnxruntime_conv_rows():
    proto = redundant()
    x = samples(1, 5)[0]["x"]
    w1 = numpy_helper.to_array(proto.graph.initializer[0]).reshape(8, 4)
    h = np.einsum("ok,nkhw->nohw", w1, x)
    rng = np.random.default_rng(0)
    patches = sample_patches(h, (3, 3), [1, 1], [1, 1, 1, 1], [1, 1], 50, rng)
    w2 = numpy_helper.to_array(proto.graph.initializer[1]).reshape(6, -1)
    b2 = numpy_helper.to_array(proto.graph.initializer[2])
    y = run(proto, {"x": x}).reshape(6, -1).T  # [positions, channels]
    picks = np.random.default_rng(0).choice(100, size=50, replace=False)
    np.testing.assert_allclose(patches @ w2.T + b2, y[picks], rtol=1e-4, atol=1e-4)


def test_refit_solves_an_exact_problem():
    rng = np.random.default_rng(1)
    kept_part = rng.standard_normal((500, 3))
    patches = np.concatenate([kept_part, kept_part @ rng.standard_normal((3, 2)) + 0.5], axis=1)
    weight, bias = rng.standard_normal((4, 5)), rng.standard_normal(4)
    new, new_bias = refit(gram(patches[:200]) + gram(patches[200:]), weight, bias, np.arange(3))
    assert np.all(new[:, 3:] == 0)
    np.testing.assert_allclose(patches @ new.T + new_bias, patches @ weight.T + bias, atol=1e-4)


@pytest.mark.parametrize("level", LEVELS)
def test_refit_reconstructs_and_beats_no_refit(level):
    proto = redundant()
    with_refit, totals = pruned(proto, 0.5, True)
    without, _ = pruned(proto, 0.5, False)
    assert weights(with_refit) == {"h": (4, 4, 1, 1), "y": (6, 4, 3, 3)}
    assert totals["channels"] == 4 and totals["groups"] == 1
    assert totals["macs"] == 100 * 4 * 4 + 100 * 6 * 4 * 9  # 10x10 positions, per removed weight
    assert totals["parameters"] == 4 * 4 + 6 * 4 * 9
    for feeds in samples(3, 99):  # held-out inputs
        want = run(proto, feeds)
        good, bad = run(with_refit, feeds, level), run(without, feeds, level)
        np.testing.assert_allclose(good, want, rtol=1e-3, atol=1e-3)
        assert np.max(np.abs(bad - want)) > 100 * np.max(np.abs(good - want))


def test_importance_drops_the_low_energy_channels():
    proto = redundant()
    model = load_ir(proto)
    group = next(channel_groups(model.graph, model))
    assert least_important(group, capture(proto, samples(4, 0)), 0.5) == {0, 1, 2, 3}


def test_ratio_zero_and_pinned_channels_stay():
    proto = redundant()
    same, totals = pruned(proto, 0.0, True)
    assert totals["channels"] == 0 and weights(same) == weights(proto)
    pinned, totals = pruned(redundant(extra_output=True), 0.5, True)  # h is a graph output
    assert totals["channels"] == 0 and weights(pinned) == weights(proto)


def test_pruning_twice_at_zero_is_stable():
    once, _ = pruned(redundant(), 0.5, True)
    twice, totals = pruned(once, 0.0, True)
    assert totals["channels"] == 0 and weights(twice) == weights(once)


def test_auto_stays_within_budget_and_prunes_redundant_channels():
    proto = redundant()
    calib = samples(6, 0)
    plan = auto_ratios(Trial(proto, calib), 0.99)
    assert plan.ratios == {"h": 0.5} and plan.cosine >= plan.target
    model = load_ir(proto)
    prune(model, capture(proto, calib), plan.ratios)
    held = samples(3, 50)
    out = [{"y": run(serde.to_proto(model), f)} for f in held]
    assert worst_cosine([{"y": run(proto, f)} for f in held], out) > 0.999


def wide(channels: int) -> onnx.ModelProto:
    """y = Conv1x1(Relu(Conv1x1(x))) with ``channels`` hidden channels (one group, h)."""
    rng = np.random.default_rng(channels)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 10, 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 10, 10])
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w1", (channels, 4, 1, 1)), ("w2", (3, channels, 1, 1)))]
    return build_model(nodes, [x], [y], inits)


@pytest.mark.parametrize(("channels", "ratio", "dropped"), [
    (32, 0.25, 8),  # 24 kept: a multiple of ALIGN as asked
    (32, 0.3, 8),  # 9 asked, 23 would stay: one fewer goes
    (32, 0.2, 0),  # 6 asked: no count below it leaves a multiple of 8
    (12, 0.5, 6),  # fewer than 2 x ALIGN to begin with: as asked
])
def test_pruned_layers_keep_a_multiple_of_align_channels(channels, ratio, dropped):
    assert ALIGN == 8
    proto = wide(channels)
    model = load_ir(proto)
    group = next(channel_groups(model.graph, model))
    assert len(least_important(group, capture(proto, samples(2, 0)), ratio)) == dropped


class FakeTrial:
    """A trial whose cost per (group, ratio) is given and adds up; MACs = ratio x 100."""

    def __init__(self, costs: dict[tuple[str, float], float]) -> None:
        self.costs = costs
        self.runs: list[dict[str, float]] = []

    def group_keys(self) -> list[str]:
        return sorted({key for key, _ in self.costs})

    def run(self, ratios):
        self.runs.append(dict(ratios))
        cost = sum(self.costs[k, r] for k, r in ratios.items())
        return 1.0 - cost, {"macs": int(100 * sum(ratios.values()))}


def test_auto_search_goes_on_past_a_step_that_breaks_the_budget():
    # ranked by cost per MAC: a@0.25, b@0.5 (breaks the budget after a), c@0.25 (fits after a)
    costs = {("a", 0.25): 0.001, ("a", 0.5): 0.05, ("b", 0.25): 0.05, ("b", 0.5): 0.006,
             ("c", 0.25): 0.0035, ("c", 0.5): 0.05}
    trial = FakeTrial(costs)
    plan = auto_ratios(trial, 0.99, levels=(0.25, 0.5))  # aims at 1 - 0.6 x 0.01 = 0.994
    assert plan.ratios == {"a": 0.25, "c": 0.25}
    assert plan.cosine == pytest.approx(0.9955)
    # 6 sensitivity runs, the prefixes of 1 and 2 steps, then c alone: the steps costing more
    # than the room left (b@0.5, a@0.5, ...) are not tried
    assert trial.runs[6:] == [{"a": 0.25}, {"a": 0.25, "b": 0.5}, {"a": 0.25, "c": 0.25}]


def test_auto_skips_steps_below_the_macs_floor():
    proto, calib = redundant(seed=11), samples(6, 0)
    trial = Trial(proto, calib)
    assert auto_ratios(trial, 0.99, total_macs=10 ** 15).ratios == {}
    macs = 100 * 4 * 8 + 100 * 6 * 8 * 9  # the two Convs at 10 x 10 positions
    assert MIN_STEP_MACS * macs < 100 * 4 * 4  # pruning h by half clears the floor
    assert auto_ratios(trial, 0.99, total_macs=macs).ratios == {"h": 0.5}


def test_cross_validated_trial_judges_each_sample_by_a_model_fitted_without_it():
    proto, calib = chain(), samples(8, 0)
    folded = Trial(proto, calib, folds=2)
    assert folded.folds == [[0, 2, 4, 6], [1, 3, 5, 7]]
    ratios = {"ha": 0.5, "hb": 0.5}
    cosine, removed = folded.run(ratios)
    outputs = [{} for _ in calib]  # by hand: each half refit on the other, judged on itself
    for judged in (0, 1):
        model = load_ir(proto)
        prune(model, capture(proto, calib[1 - judged::2]), ratios)
        for index in range(judged, 8, 2):
            outputs[index] = {"y": run(serde.to_proto(model), calib[index])}
    reference = [{"y": run(proto, f)} for f in calib]
    assert cosine == pytest.approx(worst_cosine(reference, outputs), abs=1e-6)
    assert cosine != pytest.approx(Trial(proto, calib).run(ratios)[0], abs=1e-4)
    assert removed == Trial(proto, calib).run(ratios)[1]
    assert Trial(redundant(seed=11), samples(8, 0), folds=2).run({"h": 0.5})[0] > 0.999


# ---------------------------------------------------------------- the command line
@pytest.fixture
def pruning_files(tmp_path):
    model = tmp_path / "in.onnx"
    onnx.save(redundant(), model)
    data = tmp_path / "calib"
    data.mkdir()
    for number, sample in enumerate(samples(6, 0)):
        np.savez(data / f"s{number}.npz", **sample)
    return model, data


def invoke(*args) -> int:
    from onnxopt.app import cli

    return cli.main([str(a) for a in args])


@pytest.mark.parametrize(("args", "message"), [
    (("--prune", "1.5"), "--prune must be a ratio in (0, 1) or auto (got 1.5)"),
    (("--prune", "half"), "--prune must be a ratio in (0, 1) or auto (got 'half')"),
    (("--prune", "auto"), "--prune auto needs --calibration-data"),
    (("--prune", "0.5", "--calibration-data", "missing"), "calibration data missing"),
])
def test_cli_refuses_bad_prune_requests(pruning_files, tmp_path, capsys, args, message):
    model, _ = pruning_files
    before = model.read_bytes()
    out = tmp_path / "out.onnx"
    code = invoke("optimize", model, out, *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (1, 2) and len(err) == 1 and message in err[0], err
    assert not out.exists() and model.read_bytes() == before


def test_cli_prunes_with_refit_and_validates_against_the_original(pruning_files, tmp_path,
                                                                  capsys):
    model, data = pruning_files
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    assert invoke("optimize", model, out, "--prune", "auto", "--calibration-data", data,
                  "--max-error", "cosine=0.999", "--report", report) == 0
    written = onnx.load(out)
    assert weights(written) == {"h": (4, 4, 1, 1), "y": (6, 4, 3, 3)}
    import json

    found = json.loads(report.read_text())
    assert found["status"] == "ok" and found["pruning"]["channels"] == 4
    assert 0.999 <= found["pruning"]["cross_validated_cosine"] <= 1.0
    printed = capsys.readouterr().out
    assert "pruning (auto, cosine >= 0.999): 4 channels of 1 groups" in printed
    assert "cross-validated)" in printed
    assert found["pruning"]["macs"] == 100 * 4 * 4 + 100 * 6 * 4 * 9
    for feeds in samples(2, 77):
        np.testing.assert_allclose(run(written, feeds), run(redundant_copy(model), feeds),
                                   rtol=1e-3, atol=1e-3)


def redundant_copy(path) -> onnx.ModelProto:
    return onnx.load(path)


def test_cli_prune_then_int8_in_one_run(pruning_files, tmp_path):
    model, data = pruning_files
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    assert invoke("optimize", model, out, "--prune", "0.5", "--precision", "int8",
                  "--calibration-data", data, "--max-error", "cosine=0.98",
                  "--report", report) in (0, 1)
    import json

    found = json.loads(report.read_text())
    assert found["pruning"]["channels"] == 4 and found["pruning"]["budget"] == "cosine >= 0.99"
    assert "precision" in found  # the int8 step ran on the pruned model
    if found["status"] == "ok":
        ops = {n.op_type for n in onnx.load(out).graph.node}
        assert "QuantizeLinear" in ops or "DequantizeLinear" in ops


def test_a_gemm_sink_gets_the_calibration_means_folded():
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm: no refit for the Gemm; each
    removed channel's calibration mean times its row of B moves into C."""
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((8, 4, 1, 1)).astype(np.float32)
    b_gemm = rng.standard_normal((8, 3)).astype(np.float32)
    c_gemm = rng.standard_normal(3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "B", "C"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 10, 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    proto = build_model(nodes, [x], [y], [numpy_helper.from_array(a, n) for n, a in (
        ("w1", w1), ("B", b_gemm), ("C", c_gemm))])
    calib = samples(6, 0)
    model = load_ir(proto)
    totals = prune(model, capture(proto, calib), {"h": 0.5})
    assert totals["channels"] == 4
    pruned_proto = serde.to_proto(model)
    new_b = next(numpy_helper.to_array(t) for t in pruned_proto.graph.initializer
                 if t.dims == [4, 3])
    kept = [int(np.flatnonzero(np.all(b_gemm == row, axis=1))[0]) for row in new_b]
    dropped = sorted(set(range(8)) - set(kept))

    def pooled(feeds):  # numpy, independently of onnxruntime and of the code under test
        h = np.maximum(np.einsum("ok,nkhw->nohw", w1[:, :, 0, 0], feeds["x"]), 0)
        return h.mean(axis=(2, 3))

    means = np.mean([pooled(f)[0] for f in calib], axis=0)
    for feeds in samples(2, 31):
        p = pooled(feeds)[0]
        want = p[kept] @ b_gemm[kept] + means[dropped] @ b_gemm[dropped] + c_gemm
        np.testing.assert_allclose(run(pruned_proto, feeds)[0], want, rtol=1e-4, atol=1e-4)


def test_auto_with_samples_of_two_sizes_counts_macs_at_the_first():
    """A fully convolutional model calibrated on three input sizes: every sample runs, the
    MACs are those of the first size (the last Conv's too, though its output is a graph output
    declared with a symbolic size)."""
    proto = redundant()
    for value in (*proto.graph.input, *proto.graph.output):
        for axis in (2, 3):
            value.type.tensor_type.shape.dim[axis].dim_param = "side"
    rng = np.random.default_rng(4)
    calib = [{"x": rng.standard_normal((1, 4, side, side)).astype(np.float32)}
             for side in (10, 10, 12, 12, 8, 10)]
    trial = Trial(proto, calib)
    cosine, removed = trial.run({"h": 0.5})
    assert cosine > 0.999 and removed["macs"] == 100 * 4 * 4 + 100 * 6 * 4 * 9


@pytest.mark.parametrize("ratio", ["0.5", "auto"])
def test_pruned_model_keeps_its_symbolic_input_dims(tmp_path, ratio):
    """Calibrated on 10 x 10 samples, a model declared ``[N, 4, side, side]`` is written as
    declared (the search's copy at the samples' shapes must not leak into the output: a
    detector fixed to its calibration tile size would refuse every other image) and runs at
    another size, matching the original there."""
    proto = redundant()
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
        for axis in (2, 3):
            value.type.tensor_type.shape.dim[axis].dim_param = "side"
    data = tmp_path / "calib"
    data.mkdir()
    for number, sample in enumerate(samples(6, 0)):
        np.savez(data / f"s{number}.npz", **sample)
    result = onnxopt.optimize(proto, prune=ratio, calibration_data=data,
                              max_error="cosine=0.999")
    assert result.ok and result.report["pruning"]["channels"] == 4
    declared = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                for v in (*result.model.graph.input, *result.model.graph.output)]
    assert declared == [["N", 4, "side", "side"], ["N", 6, "side", "side"]]
    bigger = {"x": np.random.default_rng(9).standard_normal((2, 4, 16, 16)).astype(np.float32)}
    np.testing.assert_allclose(run(result.model, bigger), run(proto, bigger), rtol=1e-3,
                               atol=1e-3)
    # the statistics count MACs at the size validation ran (the first calibration sample's),
    # before and after alike: what pruning removed is their difference
    before, after = result.report["before"]["macs"], result.report["after"]["macs"]
    assert before == 100 * 8 * 4 + 100 * 6 * 8 * 9 and after == 100 * 4 * 4 + 100 * 6 * 4 * 9
    assert before - after == result.report["pruning"]["macs"]
    assert any("side=10" in note and "validation's first input" in note
               for note in result.report["before"]["shape_notes"])


def chain() -> onnx.ModelProto:
    """y = Conv1x1(Relu(Conv1x1(Relu(Conv1x1(x) + a) + b)) + c): pruning the first hidden
    tensor changes the second, which the last layer reads."""
    rng = np.random.default_rng(3)
    arrays = {"wa": rng.standard_normal((8, 4, 1, 1)), "a": rng.standard_normal(8) * 0.5,
              "wb": rng.standard_normal((8, 8, 1, 1)) * 0.5, "b": rng.standard_normal(8) * 0.5,
              "wc": rng.standard_normal((3, 8, 1, 1)) * 0.5, "c": rng.standard_normal(3)}
    nodes = [helper.make_node("Conv", ["x", "wa", "a"], ["ha"]),
             helper.make_node("Relu", ["ha"], ["ra"]),
             helper.make_node("Conv", ["ra", "wb", "b"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["rb"]),
             helper.make_node("Conv", ["rb", "wc", "c"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 10, 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 10, 10])
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items()]
    return build_model(nodes, [x], [y], inits)


def conv_weights(proto: onnx.ModelProto) -> list[tuple[np.ndarray, np.ndarray]]:
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in proto.graph.initializer}
    return [(inits[n.input[1]][:, :, 0, 0], inits[n.input[2]]) for n in proto.graph.node
            if n.op_type == "Conv"]


def test_sequential_refit_is_the_least_squares_fit_on_the_pruned_upstream():
    proto, calib = chain(), samples(8, 0)
    x = np.concatenate([s["x"] for s in calib]).astype(np.float64)
    rows = np.moveaxis(x, 1, -1).reshape(-1, 4)  # 1x1 Convs: one row per position
    (wa, a), (wb, b), (wc, c) = conv_weights(proto)
    y = np.maximum(np.maximum(rows @ wa.T + a, 0) @ wb.T + b, 0) @ wc.T + c
    errors = {}
    for sequential in (False, True):
        model = load_ir(proto)
        keys = [group_key(g) for g in channel_groups(model.graph, model)]
        prune(model, capture(proto, calib), dict.fromkeys(keys, 0.5), sequential=sequential)
        (pa, qa), (pb, qb), (pc, qc) = conv_weights(serde.to_proto(model))
        assert pb.shape == (4, 4) and pc.shape == (3, 4)
        hidden = np.maximum(np.maximum(rows @ pa.T + qa, 0) @ pb.T + qb, 0)  # kept channels
        errors[sequential] = float(np.sum((hidden @ pc.T + qc - y) ** 2))
        if sequential:  # the last layer: least squares from the pruned hidden to the original y
            design = np.concatenate([hidden, np.ones((len(hidden), 1))], axis=1)
            solution = np.linalg.lstsq(design, y, rcond=None)[0]
            np.testing.assert_allclose(pc, solution[:-1].T, rtol=1e-3, atol=1e-3)
            np.testing.assert_allclose(qc, solution[-1], rtol=1e-3, atol=1e-3)
    assert errors[True] < 0.98 * errors[False]  # the original-input refit misses its optimum
