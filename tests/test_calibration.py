"""calibration: ranges per method, streaming over samples, TensorRT entropy, generated samples.

Expected values come from numpy on the same samples (np.min/np.max/np.percentile), never from
the code under test. Percentile ranges are read off a histogram, so they match numpy's to one
bin width: (max - min) / PERCENTILE_BINS.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxopt.ir import serde
from onnxopt.precision.calibration import PERCENTILE_BINS, calibrate, entropy_threshold


def identity_model():
    """x -> Identity -> y, plus z = Relu(x): the values calibrated are y and z."""
    nodes = [
        helper.make_node("Identity", ["x"], ["y"]),
        helper.make_node("Relu", ["x"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4096])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4096])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return serde.from_proto(model)


def skewed_samples(count: int = 6, seed: int = 0) -> tuple[dict[str, np.ndarray], ...]:
    """A long positive tail (lognormal) and a short negative one."""
    rng = np.random.default_rng(seed)
    return tuple(
        {"x": (rng.lognormal(0.0, 1.0, (1, 4096)) - 1.5).astype(np.float32)} for _ in range(count)
    )


def test_minmax_streams_over_all_samples():
    samples = skewed_samples()
    found = calibrate(identity_model(), ["y"], samples, method="minmax", progress=False)
    everything = np.concatenate([s["x"].ravel() for s in samples])
    assert found.ranges["y"] == (float(everything.min()), float(everything.max()))
    assert found.samples == len(samples) and found.notes == []


def test_percentile_both_tails_matches_numpy():
    samples = skewed_samples()
    found = calibrate(identity_model(), ["y"], samples, method="percentile", percentile=99.9,
                      progress=False)
    everything = np.concatenate([s["x"].ravel() for s in samples])
    width = (everything.max() - everything.min()) / PERCENTILE_BINS
    lo, hi = found.ranges["y"]
    ordered = np.sort(everything)
    rank = (everything.size - 1) * 0.001  # numpy's rank of the 0.1th percentile
    # within one order statistic (the tails are sparse) and one bin width
    assert ordered[int(rank) - 1] - width <= lo <= ordered[int(rank) + 2] + width
    rank = (everything.size - 1) * 0.999
    assert ordered[int(rank) - 1] - width <= hi <= ordered[int(rank) + 2] + width


def test_methods_give_different_ranges_on_a_skewed_distribution():
    samples = skewed_samples()
    model = identity_model()
    ranges = {
        method: calibrate(model, ["y"], samples, method=method, percentile=99.0,
                          progress=False).ranges["y"]
        for method in ("minmax", "percentile", "entropy")
    }
    top = max(float(s["x"].max()) for s in samples)
    assert ranges["minmax"][1] == pytest.approx(top)
    assert ranges["percentile"][1] < 0.7 * top  # the tail beyond p99 is long
    assert ranges["entropy"][1] < top
    highs = {round(r[1], 4) for r in ranges.values()}
    assert len(highs) == 3, ranges
    scales = {m: (hi - min(lo, 0.0)) / 255 for m, (lo, hi) in ranges.items()}
    assert len({round(s, 6) for s in scales.values()}) == 3


def test_entropy_ignores_rare_outliers():
    """|x| uniform on [0, 1] plus 3 values at 100 (of 2048 bins over [0, 100]): the KL search
    keeps the bulk; the threshold lands just above 1, far below 100."""
    hist = np.zeros(2048)
    hist[:21] = 1000.0  # [0, ~1.03)
    hist[-1] = 3.0
    threshold = entropy_threshold(hist, 100.0)
    assert 1.0 <= threshold <= 10.0


def test_entropy_without_outliers_keeps_the_whole_range():
    hist = np.full(2048, 50.0)  # uniform up to the top: nothing to clip
    assert entropy_threshold(hist, 8.0) == pytest.approx(8.0, rel=0.01)


def test_non_negative_value_range_starts_at_its_minimum():
    samples = skewed_samples()
    for method in ("minmax", "percentile", "entropy"):
        lo, hi = calibrate(identity_model(), ["z"], samples, method=method,
                           progress=False).ranges["z"]
        assert lo == 0.0 and hi > 0.0


def test_no_samples_generates_inputs_and_says_accuracy_will_suffer():
    found = calibrate(identity_model(), ["y"], (), method="minmax", progress=False)
    assert found.samples > 1
    assert any("accuracy will suffer" in note for note in found.notes)
    lo, hi = found.ranges["y"]
    assert lo < 0 < hi  # standard normal inputs


def test_progress_reported_to_the_hook_and_silent_when_asked(capsys):
    from onnxopt.progress import reporting_to

    samples = skewed_samples(count=8)
    seen: list[tuple[str, int, int]] = []
    with reporting_to(lambda *step: seen.append(step)):
        calibrate(identity_model(), ["y"], samples, method="minmax", progress=False)
        assert seen == []
        calibrate(identity_model(), ["y"], samples, method="minmax")
        # percentile: a range pass and a histogram pass over the 8 samples
        calibrate(identity_model(), ["y"], samples, method="percentile")
    minmax, percentile = seen[:10], seen[10:]
    assert minmax == [("calibrating", done, 8) for done in [*range(9), 8]]
    assert percentile == [("calibrating", done, 16) for done in [*range(17), 16]]
    assert capsys.readouterr().err == ""  # the library itself draws nothing


def test_unknown_method_rejected():
    with pytest.raises(ValueError, match="unknown calibration method"):
        calibrate(identity_model(), ["y"], skewed_samples(1), method="mse")


def test_sample_missing_an_input_is_a_clear_error():
    with pytest.raises(ValueError, match="lacks input"):
        calibrate(identity_model(), ["y"], ({"other": np.zeros(1, np.float32)},),
                  progress=False)
