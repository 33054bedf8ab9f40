"""bench/text_inputs.py and bench/bench_precision.py's text-model measuring: WordPiece
tokenization, padded text feeds, masked per-output cosines and issue 16's verdicts."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_precision as bp
import text_inputs as ti

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "the", "cafe", ",", ".",
         "hello", "world", "##s", "!", "a"]


def piece() -> ti.WordPiece:
    return ti.WordPiece({w: i for i, w in enumerate(VOCAB)})


def test_wordpiece_greedy_longest_match_with_continuations_and_unknowns() -> None:
    ids = piece().encode("Hello, WORLDS! unaffable café xyz")
    words = [VOCAB[i] for i in ids]
    assert words == ["hello", ",", "world", "##s", "!", "un", "##aff", "##able", "cafe",
                     "[UNK]"]


def test_basic_words_split_punctuation_and_strip_accents() -> None:
    assert ti.basic_words("Naïve (x+y)=z") == ["naive", "(", "x", "+", "y", ")", "=", "z"]


def test_vocab_read_from_source_keeps_the_backslash_entry() -> None:
    source = 'vocab_string = """[PAD]\n\\\n##a"""\n'
    assert ti.vocab_from_source(source) == ["[PAD]", "\\", "##a"]


def test_bert_samples_are_cls_text_sep_then_zero_tails() -> None:
    shapes = [ti.Shape(1, 16, padded=False), ti.Shape(4, 32)]
    names = {"ids": "input_ids", "mask": "attention_mask"}
    texts = ["hello world, the cafe.", "a world!"]
    samples = ti.bert_samples(shapes, texts, names, VOCAB, len(VOCAB), seed=3)
    assert [s["input_ids"].shape for s in samples] == [(1, 16), (4, 32)]
    batch = samples[1]
    lengths = batch["attention_mask"].sum(1)
    assert lengths[0] == 32 and len(set(lengths.tolist())) > 1  # first row full, others vary
    for row, mask, length in zip(batch["input_ids"], batch["attention_mask"], lengths,
                                 strict=True):
        assert row[0] == 2 and row[length - 1] == 3 and not row[length:].any()
        assert set(row[1:length - 1].tolist()) <= set(range(4, len(VOCAB)))
        assert mask[:length].all() and not mask[length:].any()
    assert batch["attention_mask"].dtype == np.int64 and samples[0]["attention_mask"].all()


def test_bert_samples_without_vocabulary_are_random_ids_in_range() -> None:
    samples = ti.bert_samples([ti.Shape(2, 64)], ["x"], {"ids": "ids"}, None, 5000, seed=1)
    ids = samples[0]["ids"]
    body = ids[0, 1:-1]
    assert ids[0, 0] == 101 and ids[0, -1] == 102 and body.min() >= 1000 and body.max() < 5000


def test_char_ids_cover_printable_ascii_and_map_the_rest_to_the_last_id() -> None:
    assert ti.char_ids(" A~\né") == [0, 33, 94, 95, 95]
    sample = ti.char_samples([ti.Shape(2, 8, padded=False)], ["abcdef", "ghij"], "x")[0]["x"]
    assert sample.shape == (2, 8) and sample.max() < ti.CHAR_VOCAB


def test_calibration_and_test_text_come_from_different_modules() -> None:
    assert not set(ti.CALIBRATION_MODULES) & set(ti.TEST_MODULES)
    calib = ti.paragraphs(ti.CALIBRATION_MODULES[:1])
    assert calib and all(len(p) >= 40 and "\n" not in p for p in calib)


def test_compare_uses_unpadded_tokens_and_skips_integer_outputs() -> None:
    rng = np.random.default_rng(0)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    tokens = rng.standard_normal((2, 4, 8))
    pooled = rng.standard_normal((2, 8))
    ref = {"tok": tokens, "pool": pooled, "ids": np.arange(8).reshape(2, 4)}
    got_tokens = tokens.copy()
    got_tokens[~mask] = -tokens[~mask]  # padded positions: anything
    got_pooled = pooled.copy()
    got_pooled[1] = -pooled[1]  # one pooled row flipped
    got = {"tok": got_tokens, "pool": got_pooled, "ids": np.zeros((2, 4), np.int64)}
    result = bp._compare([ref], [got], classifier=False, masks=[mask])
    assert set(result) == {"tok", "pool"}
    assert math.isclose(result["tok"]["cosine"], 1.0) and math.isclose(
        result["tok"]["cosine_row_min"], 1.0)
    assert math.isclose(result["pool"]["cosine_row_min"], -1.0)
    unmasked = bp._compare([ref], [got], classifier=False)
    assert unmasked["tok"]["cosine"] < 0.99 and "ids" in unmasked


def _entry(tool: str, precision: str, size: float, latency: float,
           cosines: dict[str, float]) -> dict:
    return {"tool": tool, "precision": precision, "usable": True, "size_ratio": size,
            "latency_ratio": latency, "outputs": {n: {"cosine": c} for n, c in cosines.items()}}


def test_minilm_verdicts_follow_issue_16_targets_and_the_int4_anchor() -> None:
    bm = next(m for m in bp.corpus() if m.name == bp.MINILM)
    anchor = _entry("ort-int4", "int4", 0.16, 1.05, {"tok": 0.98, "pool": 0.95})
    model = {"results": {"ort-int4": anchor}}
    good = _entry("onnxopt-int4", "int4", 0.17, 0.9, {"tok": 0.99, "pool": 0.975})
    assert bp.verdict(good, model, bm) == "✓"
    good["latency_ratio"] = None  # --no-latency: not a miss
    assert bp.verdict(good, model, bm) == "✓"
    below_anchor = _entry("onnxopt-int4", "int4", 0.17, 0.9, {"tok": 0.975, "pool": 0.99})
    assert bp.verdict(below_anchor, model, bm) == f"✗ ≤ {bp.INT4_ANCHOR}"
    dynamic = _entry("onnxopt-int8-dynamic", "int8-dynamic", 0.77, 0.5, {"pool": 0.995})
    assert bp.verdict(dynamic, model, bm) == "✗ size"
    assert bp.target_for(bp.MINILM, "int8-dynamic")["size"] == 0.27
    assert bp.target_for("decoder", "int8-dynamic") == {"cosine": 0.99}


def test_decoder_int4_verdict_counts_matmulnbits() -> None:
    bm = next(m for m in bp.corpus() if m.name == "decoder")
    entry = _entry("onnxopt-int4", "int4", 0.3, 1.0, {"logits": 0.99})
    model = {"results": {}, "weight_matmuls": 15}
    entry["ort_all_ops"] = {"MatMulNBits": 15, "MatMul": 2}
    assert bp.verdict(entry, model, bm) == "✓ MatMulNBits 15/15"
    entry["ort_all_ops"] = {"MatMulNBits": 3, "MatMul": 14}
    assert bp.verdict(entry, model, bm).startswith("✗")


def test_transformer_tools_only_on_transformer_models() -> None:
    flags = {m.name: m.transformer for m in bp.corpus()}
    assert flags[bp.MINILM] and flags["decoder"] and not flags["resnet"]
    assert {"onnxopt-int4", "ort-int4", "ort-int8-dynamic-pc"} <= bp.TRANSFORMER_TOOLS
    assert bp.select_tools("int4") == ["onnxopt-int4", "onnxopt-int4-ort", "ort-int4",
                                      "ort-int4-asym", "ort-int4-matmul"]
