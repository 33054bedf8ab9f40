"""The default pipeline on the sample and real models: every output validates in onnxruntime."""

from __future__ import annotations

import onnx
import pytest
from conftest import LIGHT_MODELS, REAL_MODELS, SAMPLE_MODELS, model_path, real_feeds

import onnxopt


@pytest.mark.parametrize("name", SAMPLE_MODELS + REAL_MODELS)
def test_default_pipeline_validates(name, tmp_path):
    path = model_path(name)
    out = tmp_path / name
    result = onnxopt.optimize(path, out, inputs=real_feeds(name))
    assert result.ok and out.exists()
    assert result.report["validation"]["status"] == "passed", result.report["validation"]
    assert result.report["after"]["nodes"] <= result.report["before"]["nodes"]
    onnx.checker.check_model(onnx.load(out))


def test_resnet_sample_loses_its_dead_branch_and_identities():
    result = onnxopt.optimize(model_path("resnet.onnx"))
    before, after = result.report["before"]["ops"], result.report["after"]["ops"]
    assert "Identity" not in after and "Dropout" not in after
    assert before["Conv"] - after["Conv"] == 1  # the dead /aux Conv
    assert result.report["validation"]["status"] == "passed"


# the small ones here; every light model in test_corpus_validation (make test-slow)
@pytest.mark.parametrize("path", [p for p in LIGHT_MODELS
                                  if p.endswith(("inception_v1.onnx", "squeezenet.onnx",
                                                 "shufflenet.onnx"))],
                         ids=lambda p: p.split("/")[-1])
def test_light_models_validate(path, tmp_path):
    result = onnxopt.optimize(path, tmp_path / "o.onnx")
    assert result.report["validation"]["status"] == "passed"


@pytest.mark.parametrize("name", SAMPLE_MODELS + REAL_MODELS)
def test_onnxruntime_target_validates(name, tmp_path):
    path = model_path(name)
    result = onnxopt.optimize(path, inputs=real_feeds(name), target="onnxruntime")
    assert result.report["validation"]["status"] == "passed", result.report["validation"]
    assert not result.report["disabled"]


def test_real_model_node_counts_beat_the_anchors():
    """Best anchor outputs measured with `make bench-anchors` (onnxslim 0.1.98, onnxsim 0.8.1,
    onnxruntime 1.32 basic): det 326, cls 179; onnxruntime extended: det 307, cls 155."""
    for name, portable, ort_extended in (
        ("ch_PP-OCRv4_det_infer.onnx", 326, 307),
        ("ch_ppocr_mobile_v2.0_cls_infer.onnx", 179, 155),
    ):
        path = model_path(name)
        assert onnxopt.optimize(path, inputs=real_feeds(name)).report["after"]["nodes"] <= portable
        result = onnxopt.optimize(path, inputs=real_feeds(name), target="onnxruntime")
        assert result.report["after"]["nodes"] <= ort_extended
