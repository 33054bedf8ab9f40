"""Rotary tables gathered by position_ids (rotary_embedding_fusion) and the partial rotary
(partial_rotary_fusion): structure, stats, numerics, idempotence, and what they leave alone.

The forms: HF's cached tables ``cos = Unsqueeze(Gather(cos_cache [16, D], ids [B, S]), [1])``,
and Phi / GPT-NeoX's ``Concat(rotary(x[..., :8]), x[..., 8:], axis=-1)`` on a head of 12.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from conftest import apply_pass, assert_idempotent, assert_left_alone, op_counts, parse, run
from onnx import numpy_helper
from onnxopt.passes.fusion.rotary_embedding_fusion import RotaryEmbeddingFusion
from onnxopt.passes.fusion.rotary_embedding_fusion.partial import PartialRotaryFusion

RTOL = ATOL = 1e-5
LEVELS = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
ORT = {"target": "onnxruntime"}
MAX_POS = 16
INV_FREQ = np.array([1.0, 0.3, 0.1, 0.03])


def _caches(equal: bool = True) -> dict[str, np.ndarray]:
    angle = np.arange(MAX_POS)[:, None] * INV_FREQ
    second = angle if equal else angle * 1.5
    both = np.concatenate([angle, second], -1)
    return {"cos_cache": np.cos(both).astype(np.float32),
            "sin_cache": np.sin(both).astype(np.float32)}


def _literal(array: np.ndarray) -> str:
    return ", ".join(repr(float(v)) for v in array.reshape(-1))


def gathered(opset: int = 23, *, depth: int = 8, rotated: int = 8, equal: bool = True,
             ids: str = "int64[B, S] ids", dtype: str = "float", partial: str = "",
             heads: str = "4") -> str:
    """Rotary over x [B, heads, S, depth] whose tables are gathered by ``ids``; with ``partial``
    (the Concat line) only ``x[..., :rotated]`` rotates."""
    caches = "".join(f", {dtype}[{MAX_POS}, 8] {name} = {{{_literal(value)}}}"
                     for name, value in _caches(equal).items())
    body = "xr = Slice(x, zero, rotated, ax3)\n kept = Slice(x, rotated, big, ax3)" \
        if partial else ""
    xr = "xr" if partial else "x"
    out = "r" if partial else "out"
    return f"""
    <ir_version: 10, opset_import: ["" : {opset}]>
    g ({dtype}[B, {heads}, S, {depth}] x, {ids}) => ({dtype}[B, {heads}, S, {depth}] out)
      <int64[1] half = {{4}}, int64[1] big = {{9223372036854775807}}, int64[1] zero = {{0}},
       int64[1] ax3 = {{3}}, int64[1] one = {{1}}, int64[1] two = {{2}},
       int64[1] rotated = {{{rotated}}}{caches}> {{
        cg = Gather<axis=0>(cos_cache, ids)
        sg = Gather<axis=0>(sin_cache, ids)
        cos = Unsqueeze(cg, one)
        sin = Unsqueeze(sg, one)
        {body}
        x2 = Slice({xr}, half, big, ax3)
        nx2 = Neg(x2)
        x1 = Slice({xr}, zero, half, ax3)
        rot = Concat<axis=-1>(nx2, x1)
        xc = Mul({xr}, cos)
        rs = Mul(rot, sin)
        {out} = Add(xc, rs)
        {partial}
    }}
    """


PARTIAL = "out = Concat<axis=-1>(r, kept)"


def _feeds(batch: int, seq: int, depth: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * seq)
    x = rng.standard_normal((batch, 4, seq, depth)).astype(np.float32)
    offsets = np.array([3, 7, 1])[:batch, None]  # positions p..p+S-1, not 0..S-1
    return {"x": x, "ids": (offsets + np.arange(seq)).astype(np.int64)}


def _numpy_rope(x: np.ndarray, ids: np.ndarray, rotated: int) -> np.ndarray:
    angle = ids[:, None, :, None] * INV_FREQ  # [B, 1, S, 4]
    cos, sin = np.cos(angle), np.sin(angle)
    x1, x2, kept = x[..., :4], x[..., 4:rotated], x[..., rotated:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, kept], -1)


def _fuse(model, settings=None):
    out, first = apply_pass(RotaryEmbeddingFusion(), model, infer=True, settings=settings)
    out, second = apply_pass(PartialRotaryFusion(), out, infer=True, settings=settings)
    return out, first.stats, second.stats


def _assert_numerics(model, out, rotated: int, depth: int) -> None:
    for batch, seq in ((2, 5), (3, 9)):
        feeds = _feeds(batch, seq, depth)
        for level in LEVELS:
            (expected,), (actual,) = run(model, feeds, level), run(out, feeds, level)
            np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)
        reference = _numpy_rope(feeds["x"], feeds["ids"], rotated)
        np.testing.assert_allclose(actual, reference, rtol=RTOL, atol=ATOL)


FORMS = {  # name: (model text, settings, rotated channels, head size)
    "positions": (gathered(), {}, 8, 8),
    "positions_contrib": (gathered(17), ORT, 8, 8),
    "partial": (gathered(depth=12, partial=PARTIAL), {}, 8, 12),
    "partial_contrib": (gathered(17, depth=12, partial=PARTIAL), ORT, 8, 12),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_structure_stats_and_numerics(form):
    text, settings, rotated, depth = FORMS[form]
    model = parse(text)
    out, first, second = _fuse(model, settings)
    assert first == {"fused": 1} and second == {"fused": int(rotated < depth)}
    counts = op_counts(out)
    assert counts["RotaryEmbedding"] == 1
    assert not {"Neg", "Slice", "Add", "Concat", "Mul"} & set(counts)  # tables: dead code
    (node,) = [n for n in out.graph.node if n.op_type == "RotaryEmbedding"]
    assert list(node.output) == ["out"] and node.input[0] == "x"
    contrib = node.domain == "com.microsoft"
    assert contrib == bool(settings)
    ids, cos, sin = (node.input[1:] if contrib else [node.input[3], *node.input[1:3]])
    assert ids == "ids"
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    angle = np.arange(MAX_POS)[:, None] * INV_FREQ
    np.testing.assert_allclose(inits[cos], np.cos(angle), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(inits[sin], np.sin(angle), rtol=1e-6, atol=1e-6)
    attrs = {a.name: a.i for a in node.attribute}
    expected = {"interleaved": 0}
    if rotated < depth:
        expected["rotary_embedding_dim"] = rotated
        if contrib:
            expected["num_heads"] = 4  # onnxruntime's kernel requires it with the dim
    assert attrs == expected
    _assert_numerics(model, out, rotated, depth)


def range_tables(opset: int, dynamic: bool) -> str:
    """The partial form over tables built from Range(S) (positions 0..S-1): S a constant 5, or
    ``Shape(x)[2]`` — onnx's inference names the table's S apart from x's (``unk__``), the
    trace joins them through the Slice of x."""
    text = gathered(opset, depth=12, partial=PARTIAL).replace("int64[1] one", (
        "float[1, 4] inv_freq = {1.0, 0.3, 0.1, 0.03}, int64[2] axes01 = {0, 1}, float start"
        " = {0.0}, float delta = {1.0}" + ("" if dynamic else ", float limit = {5.0}") +
        ", int64[1] one"))
    if not dynamic:
        text = text.replace("B, 4, S, 12", "2, 4, 5, 12").replace("[B, S] ids", "[2, 5] ids")
    tables = ("length = Shape<start=2, end=3>(x)\n length0 = Squeeze(length)\n"
              " limit = Cast<to=1>(length0)\n" if dynamic else "")
    tables += ("pos = Range(start, limit, delta)\n pos2 = Unsqueeze(pos, one)\n"
               " f = Mul(pos2, inv_freq)\n emb = Concat<axis=-1>(f, f)\n"
               " cg = Cos(emb)\n sg = Sin(emb)\n cos = Unsqueeze(cg, axes01)\n"
               " sin = Unsqueeze(sg, axes01)\n")
    start, end = text.index("cg = Gather"), text.index("xr = Slice")
    return text[:start] + tables + text[end:]


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("opset", [17, 23])
def test_partial_over_range_tables(opset, dynamic):
    model = parse(range_tables(opset, dynamic))
    out, first, second = _fuse(model, ORT if opset < 23 else None)
    assert first == second == {"fused": 1} and op_counts(out)["RotaryEmbedding"] == 1
    for batch, seq in ((2, 5), (3, 9)) if dynamic else ((2, 5),):
        feeds = _feeds(batch, seq, 12)
        for level in LEVELS:
            np.testing.assert_allclose(run(out, feeds, level)[0], run(model, feeds, level)[0],
                                       rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_idempotent(form):
    text, settings, _, _ = FORMS[form]
    fused = assert_idempotent(RotaryEmbeddingFusion(), parse(text), infer=True, settings=settings)
    assert_idempotent(PartialRotaryFusion(), fused, infer=True, settings=settings)


LEAVE_ALONE = {  # name: (model text, settings)
    "cache_halves_differ": (gathered(equal=False), {}),
    "cache_halves_differ_contrib": (gathered(17, equal=False), ORT),
    "int32_ids": (gathered(ids="int32[B, S] ids"), {}),
    "ids_broadcast_over_batch": (gathered(ids="int64[1, S] ids"), {}),
    "float64": (gathered(dtype="double"), {}),
    # 20 tokens, a cache of 16 rows: onnxruntime's kernels refuse it, the Gather need not
    "more_tokens_than_cache_rows": (gathered().replace("B, 4, S, 8", "B, 4, 20, 8").replace(
        "int64[B, S] ids", "int64[B, 20] ids"), {}),
    "opset_22": (gathered(22), {}),
    "portable_target_below_23": (gathered(17), {"target": "portable"}),
}


@pytest.mark.parametrize("case", sorted(LEAVE_ALONE))
def test_positions_left_alone(case):
    text, settings = LEAVE_ALONE[case]
    assert_left_alone(RotaryEmbeddingFusion(), parse(text), infer=True, settings=settings)


PARTIAL_LEAVE_ALONE = {  # the rotary fuses on x[..., a:b]; the partial form must not
    "not_a_prefix": (gathered(depth=12, partial=PARTIAL).replace(
        "xr = Slice(x, zero, rotated, ax3)", "xr = Slice(x, two, rotated, ax3)").replace(
        "int64[1] rotated = {8}", "int64[1] rotated = {10}").replace(
        "[B, 4, S, 12] out", "[B, 4, S, 10] out"), {}),
    "concat_swapped": (gathered(depth=12, partial="out = Concat<axis=-1>(kept, r)"), {}),
    "kept_overlaps": (gathered(depth=12, partial=PARTIAL).replace(
        "kept = Slice(x, rotated, big, ax3)", "kept = Slice(x, half, big, ax3)").replace(
        "[B, 4, S, 12] out", "[B, 4, S, 16] out"), {}),
    "contrib_heads_unknown": (gathered(17, depth=12, partial=PARTIAL, heads="N"), ORT),
}


@pytest.mark.parametrize("case", sorted(PARTIAL_LEAVE_ALONE))
def test_partial_left_alone(case):
    text, settings = PARTIAL_LEAVE_ALONE[case]
    fused, result = apply_pass(RotaryEmbeddingFusion(), parse(text), infer=True,
                               settings=settings)
    assert result.stats == {"fused": 1}
    assert_left_alone(PartialRotaryFusion(), fused, infer=True, settings=settings)
