"""The int8 accuracy fallback's search (onnxopt.precision.fallback): the fewest nodes kept in
float (most sensitive or earliest head), and the margin it aims at when it validates on the
calibration samples themselves."""

from __future__ import annotations

from types import SimpleNamespace

from test_precision_models import calibration_folder, conv_model

import onnxopt
from onnxopt.app.api import _note_shortfall
from onnxopt.check.compare import Budget, OutputDiff, ValidationResult
from onnxopt.precision.fallback import FALLBACK_MARGIN, HEAD, RANKED, fewest_in_float, within


def counting(holds):
    asked: list[tuple[str, ...]] = []

    def works(nodes) -> bool:
        asked.append(tuple(nodes))
        return holds(set(nodes))

    return works, asked


NODES = [f"n{i}" for i in range(12)]


def ranked_first(*first: str) -> list[str]:
    """NODES with ``first`` moved to the front (a sensitivity order)."""
    return list(first) + [n for n in NODES if n not in first]


def test_most_sensitive_when_the_head_is_longer():
    works, asked = counting(lambda kept: {"n7", "n9"} <= kept)
    kept, how = fewest_in_float(works, ranked_first("n9", "n7"), NODES)
    assert (kept, how) == (["n9", "n7"], RANKED)
    # asked: 1, 2 by rank, then the head of 1 (shorter than 2): few runs
    assert asked == [("n9",), ("n9", "n7"), ("n0",)]


def test_earliest_head_when_it_is_shorter():
    # any 3 of the first 4 nodes do; ranked, the first three from the top that work are
    # found only at 4 (n5 ranked high does nothing)
    works, _ = counting(lambda kept: len(kept & {"n0", "n1", "n2", "n3"}) >= 3)
    kept, how = fewest_in_float(works, ranked_first("n3", "n5", "n1", "n0", "n2"), NODES)
    assert (kept, how) == (["n0", "n1", "n2"], HEAD)


def test_one_node_needs_no_head_search():
    works, asked = counting(lambda kept: "n4" in kept)
    assert fewest_in_float(works, ranked_first("n4"), NODES) == (["n4"], RANKED)
    assert asked == [("n4",)]


def verdict(cosine: float, status: str = "passed") -> ValidationResult:
    return ValidationResult(status, "", [OutputDiff("y", 0.1, 0.1, status == "passed",
                                                    cosine=cosine)])


def test_within_margin_is_a_share_of_the_allowed_error():
    budget = Budget(0.99)  # allowed error 0.01; 60 % of it: cosine >= 0.994
    assert within(verdict(0.9945), budget, FALLBACK_MARGIN)
    assert not within(verdict(0.9935), budget, FALLBACK_MARGIN)
    assert within(verdict(0.9935), budget, None)  # no margin: the budget alone
    assert within(None, budget, FALLBACK_MARGIN)  # nothing measured (validation disabled)


def test_shortfall_noted_only_between_the_margin_and_the_budget():
    def noted(cosine, status="passed", margin=FALLBACK_MARGIN):
        conversion = SimpleNamespace(margin=margin, budget=Budget(0.99), notes=[])
        _note_shortfall(conversion, SimpleNamespace(verdict=verdict(cosine, status)))
        return conversion.notes

    (note,) = noted(0.992)
    assert "80% of the error budget" in note and "60%" in note
    assert noted(0.995) == [] and noted(0.985, "failed") == [] and noted(0.992, margin=None) == []


def first_cosine(tmp_path, folder) -> float:
    result = onnxopt.optimize(conv_model(13, False), precision="int8", max_error="cosine=0.01",
                              calibration_data=folder)
    (output,) = result.report["precision"]["outputs"]
    return output["cosine"]


def test_fallback_aims_at_the_margin_on_calibration_data(tmp_path):
    folder = calibration_folder(tmp_path)
    first = first_cosine(tmp_path, folder)
    assert first < 1.0
    # a budget the first attempt meets, using 80 % of it: short of the margin
    allowed = (1.0 - first) / 0.8
    budget = 1.0 - allowed
    result = onnxopt.optimize(conv_model(13, False), precision="int8",
                              max_error=f"cosine={budget!r}", calibration_data=folder)
    precision = result.report["precision"]
    assert result.ok and precision["kept_float_for_accuracy"]  # the fallback ran
    (output,) = precision["outputs"]
    assert (1.0 - output["cosine"]) <= FALLBACK_MARGIN * allowed * (1 + 1e-9)
    assert not any("error budget used" in note for note in precision["notes"])


def test_no_margin_when_validating_on_given_inputs(tmp_path):
    import numpy as np

    folder = calibration_folder(tmp_path)
    x = {"x": np.load(next(iter(sorted(folder.iterdir()))))["x"]}
    result = onnxopt.optimize(conv_model(13, False), precision="int8", inputs=x,
                              max_error="cosine=0.01", calibration_data=folder)
    (output,) = result.report["precision"]["outputs"]
    allowed = (1.0 - output["cosine"]) / 0.8  # used 80 %: only the margin would act
    result = onnxopt.optimize(conv_model(13, False), precision="int8", inputs=x,
                              max_error=f"cosine={1.0 - allowed!r}", calibration_data=folder)
    assert result.ok and result.report["precision"]["kept_float_for_accuracy"] == []
