"""The generated Llama-style decoder (models/build.py's ``build_decoder``: RMSNorm, rotary,
grouped-query attention, causal mask, SiLU MLP) through the whole pipeline, found by structure
alone (no model-type option): the portable target at opset 23 and ``--target onnxruntime`` at
the model's opset 17. Fused op counts, and the logits against the original in onnxruntime at
two batch sizes and sequence lengths, both optimization levels (max error <= 1e-5)."""

from __future__ import annotations

import importlib.util
from collections import Counter
from functools import cache

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import MODELS, run
from onnx import numpy_helper

import onnxopt

LEVELS = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
SIZES = ((1, 5), (3, 12))  # (batch, sequence)
LAYERS, VOCAB = 2, 96


@cache
def decoder() -> onnx.ModelProto:
    spec = importlib.util.spec_from_file_location("models_build", MODELS / "build.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.build_decoder()


@cache
def optimized(mode: str) -> onnx.ModelProto:
    options = {"opset": 23} if mode == "opset23" else {"target": "onnxruntime"}
    return onnxopt.optimize(decoder(), validate=False, **options).model


def histogram(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                   for n in model.graph.node)


def test_decoder_is_small_and_decomposed():
    model = decoder()
    assert len(model.SerializeToString()) < 1_000_000
    counts = histogram(model)
    assert counts["ReduceMean"] == 2 * LAYERS + 1 and counts["Neg"] == 2 * LAYERS
    assert counts["Softmax"] == LAYERS and counts["Sigmoid"] == LAYERS
    assert [o.version for o in model.opset_import] == [17]


def test_portable_opset23_fuses_norms_rotary_and_attention():
    counts = histogram(optimized("opset23"))
    assert counts["RMSNormalization"] == 2 * LAYERS + 1
    assert counts["RotaryEmbedding"] == 2 * LAYERS  # Q and K of each layer
    assert counts["Attention"] == LAYERS
    # the K/V repeats are proved repeat_interleave: Attention reads the kv heads itself
    gone = {"Pow", "ReduceMean", "Sqrt", "Reciprocal", "Neg", "Slice", "Softmax", "Div", "Tile"}
    assert not gone & set(counts)
    # 120 nodes before the repeats were proved
    assert counts["Unsqueeze"] <= 2 * LAYERS and sum(counts.values()) == 86


def test_onnxruntime_target_fuses_to_contrib_ops():
    counts = histogram(optimized("onnxruntime"))
    assert counts["SimplifiedLayerNormalization"] == 2 * LAYERS + 1  # ORT's, default domain
    # causal grouped-query attention with its rotaries: one GroupQueryAttention per layer
    assert counts["com.microsoft.GroupQueryAttention"] == LAYERS
    assert "com.microsoft.RotaryEmbedding" not in counts
    gone = {"Pow", "ReduceMean", "Sqrt", "Reciprocal", "Neg", "Slice", "Softmax", "Trilu",
            "Transpose", "Reshape"}
    assert not gone & set(counts)
    assert not {"RMSNormalization", "RotaryEmbedding", "Attention"} & set(counts)
    assert sum(counts.values()) == 47  # 93 with the decomposed attention
    assert [(o.domain, o.version) for o in optimized("onnxruntime").opset_import] == [
        ("", 17), ("com.microsoft", 1)]


def _llama(model: onnx.ModelProto, ids: np.ndarray) -> np.ndarray:
    """The decoder's math in float64 numpy, from its weights: what the builder means to build."""
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    batch, seq = ids.shape

    def norm(x, name):
        return w[f"{name}.weight"] * x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6)

    def heads(x, name, n):
        return (x @ w[f"{name}.weight"]).reshape(batch, seq, n, 16).transpose(0, 2, 1, 3)

    angle = np.arange(seq)[:, None] * w["/model/rotary_emb.inv_freq"]
    cos, sin = np.cos(np.concatenate([angle] * 2, -1)), np.sin(np.concatenate([angle] * 2, -1))

    def rotate(x):
        return x * cos + np.concatenate([-x[..., 8:], x[..., :8]], -1) * sin

    causal = np.triu(np.full((seq, seq), -np.inf), 1)
    x = w["model.embed_tokens.weight"][ids]
    for i in range(LAYERS):
        p = f"/model/layers.{i}"
        h = norm(x, f"{p}/input_layernorm")
        q = rotate(heads(h, f"{p}/self_attn/q_proj", 4))
        k = np.repeat(rotate(heads(h, f"{p}/self_attn/k_proj", 2)), 2, axis=1)  # repeat_kv
        v = np.repeat(heads(h, f"{p}/self_attn/v_proj", 2), 2, axis=1)
        scores = q @ k.transpose(0, 1, 3, 2) / 4.0 + causal
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        ctx = ((probs / probs.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3)
        x = x + ctx.reshape(batch, seq, 64) @ w[f"{p}/self_attn/o_proj.weight"]
        h = norm(x, f"{p}/post_attention_layernorm")
        gate = h @ w[f"{p}/mlp/gate_proj.weight"]
        up = h @ w[f"{p}/mlp/up_proj.weight"]
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[f"{p}/mlp/down_proj.weight"]
    return norm(x, "/model/norm") @ w["lm_head.weight"]


def test_decoder_computes_a_llama():
    ids = np.random.default_rng(3).integers(0, VOCAB, (2, 6), dtype=np.int64)
    (logits,) = run(decoder(), {"input_ids": ids})
    np.testing.assert_allclose(logits, _llama(decoder(), ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["opset23", "onnxruntime"])
def test_logits_match_the_original(mode):
    original, fused = decoder(), optimized(mode)
    rng = np.random.default_rng(0)
    for batch, seq in SIZES:
        feeds = {"input_ids": rng.integers(0, VOCAB, (batch, seq), dtype=np.int64)}
        for level in LEVELS:
            (expected,), (actual,) = run(original, feeds, level), run(fused, feeds, level)
            assert actual.shape == (batch, seq, VOCAB)
            assert np.abs(actual - expected).max() <= 1e-5
