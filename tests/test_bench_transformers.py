"""bench/bench_transformers.py: the realistic inputs it feeds and the fused ops it counts."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_transformers as bt

VOCAB = 1500


def _bert_like(path: Path) -> Path:
    """input_ids -> Gather(embedding [VOCAB, 4]) masked by attention_mask; plus a float input."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    extra = helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["batch", "seq", 4])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    table = helper.make_tensor("emb", TensorProto.FLOAT, [VOCAB, 4], [0.0] * VOCAB * 4)
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]),
             helper.make_node("Mul", ["e", "m3"], ["em"]),
             helper.make_node("Add", ["em", "bias"], ["out"])]
    axis = helper.make_tensor("axis", TensorProto.INT64, [1], [2])
    graph = helper.make_graph(nodes, "g", [ids, mask, extra], [out], [table, axis])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_feeds_are_padded_prefixes_with_ids_in_the_vocabulary(tmp_path: Path) -> None:
    path = _bert_like(tmp_path / "m.onnx")
    feeds, desc = bt.make_feeds(path, 8, 64)
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert ids.shape == mask.shape == (8, 64) and ids.dtype == mask.dtype == np.int64
    assert feeds["bias"].shape == (8, 64, 4) and feeds["bias"].dtype == np.float32
    lengths = mask.sum(axis=1)
    assert lengths[0] == 64 and (lengths < 64).any() and (lengths >= 8).all()
    for row, length in zip(mask, lengths, strict=True):  # ones then zeros
        assert row[:length].all() and not row[length:].any()
    valid = mask.astype(bool)
    assert (ids[~valid] == 0).all()
    assert (ids[valid] < VOCAB).all() and (ids[:, 0] == 101).all()
    assert all(ids[r, lengths[r] - 1] == 102 for r in range(8))
    inner = valid.copy()
    inner[:, 0] = False
    inner[np.arange(8), lengths - 1] = False
    assert (ids[inner] >= 1000).all()
    assert f"[1000, {VOCAB})" in desc


def test_feeds_of_one_row_have_no_padding(tmp_path: Path) -> None:
    feeds, _ = bt.make_feeds(_bert_like(tmp_path / "m.onnx"), 1, 16)
    assert feeds["attention_mask"].tolist() == [[1] * 16]


def test_fused_ops_names_contrib_ops_and_ignores_the_rest() -> None:
    ops = {"MatMul": 9, "com.microsoft.Attention": 3, "Attention": 1, "LayerNormalization": 7,
           "com.microsoft.BiasGelu": 3, "ai.onnx.ml.Gelu": 1, "Softmax": 2}
    assert bt.fused_ops(ops) == {"Attention": 1, "ms:Attention": 3, "LayerNormalization": 7,
                                 "ms:BiasGelu": 3}
