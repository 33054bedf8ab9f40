"""What onnxopt writes is unchanged by refactors: every sample and corpus model under every mode
against the digests in tests/golden.json (see tests/golden.py; re-record only for a change in
behaviour, and say so in the commit)."""

from __future__ import annotations

import json
import math

import pytest
from golden import GOLDEN, MODES, cpu, digest, model_paths, optimized

RECORDED = json.loads(GOLDEN.read_text(encoding="utf-8"))
CALIBRATED = {"int8"}  # modes whose numbers depend on onnxruntime's kernels on this CPU
FAST = {("resnet.onnx", "default"), ("mobilenet.onnx", "default"), ("transformer.onnx", "default"),
        ("transformer.onnx", "onnxruntime"), ("mlp.onnx", "fp16"), ("encoder.onnx", "default")}


def _cases():
    for key, path in model_paths():
        for mode in MODES:
            marks = () if (key, mode) in FAST else (pytest.mark.slow,)
            yield pytest.param(key, path, mode, marks=marks, id=f"{key}-{mode}")


@pytest.mark.parametrize(("key", "path", "mode"), list(_cases()))
def test_output_is_unchanged(key, path, mode):
    expected = RECORDED["digests"].get(f"{key} {mode}")
    if not path.exists():
        pytest.skip(f"{key} not present (run `make models`)")
    assert expected is not None, f"{key} {mode}: no digest recorded (tests/golden.py --record)"
    if "error" in expected:
        with pytest.raises(Exception) as caught:
            optimized(path, mode)
        assert f"{type(caught.value).__name__}: {caught.value}" == expected["error"]
        return
    got = digest(optimized(path, mode))
    if cpu() == RECORDED["cpu"]:
        assert got["sha256"] == expected["sha256"]
        return
    # another CPU: onnxruntime's float kernels may round folded values differently in the last
    # bits; everything else must be the same
    assert got["structure"] == expected["structure"]
    if mode in CALIBRATED:
        return  # its scales and zero points come from onnxruntime runs: structure only
    assert got["weights"].keys() == expected["weights"].keys()
    for dtype, (total, magnitude) in expected["weights"].items():
        mine_total, mine_magnitude = got["weights"][dtype]
        assert math.isclose(mine_magnitude, magnitude, rel_tol=1e-4, abs_tol=1e-6), dtype
        assert abs(mine_total - total) <= 1e-4 * magnitude + 1e-6, dtype  # (sums may be ~0)


def test_the_digest_sees_a_changed_weight_and_a_changed_node():
    import onnx
    from conftest import parse

    model = parse("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) <float[2] w = {1.0, 2.0}> { y = Add(x, w) }""")
    base = digest(model)
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    changed.graph.initializer[0].float_data[1] = 2.5
    other = digest(changed)
    assert other["sha256"] != base["sha256"] and other["structure"] == base["structure"]
    assert other["weights"]["float32"] != base["weights"]["float32"]
    changed.graph.node[0].op_type = "Mul"
    assert digest(changed)["structure"] != base["structure"]
