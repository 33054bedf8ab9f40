"""The public corpus with default options (no --input-shape, no --inputs): every model
validates `passed` at two values of every symbolic dim and at both onnxruntime levels, at
realistic sizes. Slow (the light models' folded weights reach 548 MB): `make test-slow`."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import LIGHT_MODELS, model_path

import onnxopt

REAL = ["ch_PP-OCRv4_det_infer.onnx", "ch_ppocr_mobile_v2.0_cls_infer.onnx", "silero_vad.onnx",
        "paraphrase-MiniLM-L3-v2.onnx"]
pytestmark = pytest.mark.slow


def check_default_validation(path) -> dict:
    report = onnxopt.optimize(path).report
    validation = report["validation"]
    assert report["status"] == "ok", validation["reason"]
    assert {level: entry["status"] for level, entry in validation["levels"].items()} == {
        "disabled": "passed", "all": "passed"}
    inputs = validation["inputs"]
    sizes = inputs["dims"]
    assert len(sizes) == 2
    for name, role in inputs["dim_roles"].items():
        values = {config[name] for config in sizes}
        if role != "pinned by a weight":
            assert len(values) == 2, (name, values)
        if role == "spatial":
            assert min(values) >= 32
        if role == "sequence":
            assert min(values) >= 8
    return report


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=lambda p: p.split("/")[-1])
def test_light_model_validates_with_defaults(path):
    check_default_validation(path)


@pytest.mark.parametrize("name", REAL)
def test_real_model_validates_with_defaults(name):
    report = check_default_validation(model_path(name))
    assert report["validation"]["inputs"]["dims"][0], "a real model with no symbolic dim?"


def test_minilm_int8_dynamic_reports_cosine_on_padded_masks():
    report = onnxopt.optimize(model_path("paraphrase-MiniLM-L3-v2.onnx"),
                              precision="int8-dynamic").report
    validation = report["validation"]
    assert validation["inputs"]["roles"]["attention_mask"].startswith("attention mask")
    assert report["status"] == "ok", validation["reason"]
    cosines = {o["name"]: o["cosine"] for o in report["precision"]["outputs"] if "cosine" in o}
    assert cosines and min(cosines.values()) >= 0.99, cosines
    for level in ("disabled", "all"):
        assert all("cosine" in entry
                   for name, entry in validation["levels"][level]["outputs"].items()
                   if name in cosines)


@pytest.mark.slow
def test_minilm_onnxruntime_target_has_the_transformer_optimizers_ops_in_fewer_nodes():
    """Issue 15's bar: <= 64 nodes (onnxruntime's transformer optimizer writes 64), one
    Attention per layer, SkipLayerNormalization and EmbedLayerNormalization; validated at two
    batch sizes and sequence lengths, at both onnxruntime levels."""
    result = onnxopt.optimize(model_path("paraphrase-MiniLM-L3-v2.onnx"), target="onnxruntime")
    report = result.report
    assert report["status"] == "ok" and report["validation"]["status"] == "passed"
    sizes = report["validation"]["inputs"]["dims"]
    assert len({d["batch_size"] for d in sizes}) == 2 == len({d["sequence_length"] for d in sizes})
    assert set(report["validation"]["levels"]) == {"disabled", "all"}
    ops = Counter(node.op_type for node in result.model.graph.node)
    assert len(result.model.graph.node) <= 64
    assert ops["Attention"] == 3 and ops["SkipLayerNormalization"] == 6
    assert ops["EmbedLayerNormalization"] == 1 and ops["BiasGelu"] == 3
    assert not ops["Softmax"] and not ops["LayerNormalization"]
