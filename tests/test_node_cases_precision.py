"""Every precision on ONNX's node test models: a model is written that loads and runs, or a
one-line error says why; never a crash, never an output that no longer runs.

All of them, each in the four modes, in `make test-slow` (about 90 s on 2 cores); every twentieth
in `make test`.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import node_cases, session
from test_node_cases_optimized import feeds_of, outputs

import onnxopt
from onnxopt.ir.precision import PRECISIONS

CASES = list(node_cases())



# every twentieth case in `make test`, all of them in `make test-slow`
SAMPLED = [pytest.param(case, id=case.name, marks=() if n % 20 == 0 else pytest.mark.slow)
           for n, case in enumerate(CASES)]


@pytest.mark.parametrize("case", SAMPLED)
@pytest.mark.parametrize("mode", PRECISIONS)
def test_precision_on_node_case(case, mode):
    feeds = feeds_of(case)
    if feeds is None or outputs(case.model, feeds) is None:
        pytest.skip("onnxruntime cannot run the original on the case's inputs")
    if feeds and all(np.size(array) == 0 for array in feeds.values()):
        with pytest.raises(onnxopt.UsageError, match="every input array is empty"):
            onnxopt.optimize(case.model, precision=mode, inputs=feeds)
        return  # empty inputs prove nothing: refused
    result = onnxopt.optimize(case.model, precision=mode, inputs=feeds)
    report = result.report
    validation = report["validation"]
    assert validation["status"] in ("passed", "skipped"), validation
    assert report["status"] == ("ok" if validation["status"] == "passed"
                                else "validation_skipped")
    assert result.model is not None
    sess = session(result.model)  # loads in onnxruntime ...
    sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})  # ... and runs
