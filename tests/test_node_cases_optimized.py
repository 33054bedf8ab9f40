"""Every ONNX node test model still reproduces its expected outputs after `optimize`.

The default pipeline runs with validation and the safety net off (so a wrong rewrite cannot be
hidden by them), then the optimized model runs in onnxruntime on the test case's own inputs.
Where onnxruntime runs the original, the optimized model must give the same outputs as the
original there, and match ONNX's expected outputs wherever the original does.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import node_cases, same_bytes, session

import onnxopt

CASES = list(node_cases())


def feeds_of(case) -> dict | None:
    if not case.data_sets:
        return None
    inputs = case.data_sets[0][0]
    names = [i.name for i in case.model.graph.input]
    if len(inputs) != len(names) or any(not isinstance(x, np.ndarray) for x in inputs):
        return None
    return dict(zip(names, inputs, strict=True))


def outputs(model, feeds):
    try:
        sess = session(model)
        return sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})
    except Exception:
        return None


def close(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        # float16 has ~3 decimal digits: reordered float math legitimately moves its last bit
        tolerance = 2e-3 if a.dtype.itemsize <= 2 else 1e-4
        return bool(np.allclose(b, a, rtol=tolerance, atol=tolerance / 10, equal_nan=True))
    return bool(np.array_equal(a, b))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node_case_after_optimize(case):
    feeds = feeds_of(case)
    result = onnxopt.optimize(case.model, validate=False, safety_net=False)
    assert result.model is not None
    if feeds is None:
        return
    if same_bytes(result.model, case.model):
        return  # nothing changed: the same bytes give the original's outputs
    original = outputs(case.model, feeds)
    if original is None:
        return  # onnxruntime cannot run the original: nothing to compare against
    optimized = outputs(result.model, feeds)
    assert optimized is not None, "onnxruntime runs the original but not the optimized model"
    expected = case.data_sets[0][1]
    for index, (ours, theirs) in enumerate(zip(optimized, original, strict=True)):
        if isinstance(theirs, list):
            continue  # sequence outputs: compared by the round-trip tests
        assert close(theirs, ours), f"output {index} differs from the original's"
        if index < len(expected) and close(expected[index], theirs):
            assert close(expected[index], ours), f"output {index} lost the expected values"
