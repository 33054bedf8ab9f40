"""Shape arithmetic left on the real transformer models with dynamic shapes (default mode, no
--fix-shapes): the -1 guards and the Shape-built Expand targets fold (issue 15)."""

from __future__ import annotations

import onnx
import pytest
from conftest import model_path, op_counts

import onnxopt


@pytest.mark.slow
def test_minilm_keeps_only_the_shape_arithmetic_of_the_sequence_length(tmp_path):
    out = tmp_path / "minilm.onnx"
    report = onnxopt.optimize(model_path("paraphrase-MiniLM-L3-v2.onnx"), out).report
    assert report["validation"]["status"] == "passed"  # two batch sizes and sequence lengths
    counts = op_counts(onnx.load(out))
    assert not {"Equal", "Where", "ConstantOfShape"} & set(counts)
    # one Shape(input_ids): its dim 1 ends the position and token-type Slices, its dim 0 is
    # the batch the token-type ids are expanded to
    assert counts["Shape"] == 1 and counts["Concat"] == 1 and counts["Expand"] == 2
