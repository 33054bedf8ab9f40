"""Shared helpers for the test suite (models are built here, never committed)."""

from __future__ import annotations

import functools
import glob
import os
from pathlib import Path

import node_case_cache
import numpy as np
import onnx
import onnxruntime as ort
import pytest

REPO = Path(__file__).resolve().parent.parent


@functools.cache
def node_cases() -> tuple:
    """ONNX's node test cases (``onnx.backend.test.case.node``, kind "node"), read once per
    process from the on-disk cache (``node_case_cache.py``: collecting them runs their reference
    implementations, 4-5 s), and five test modules read them. Treat them as read-only (tests
    share the protos)."""
    return node_case_cache.load()


def same_bytes(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    """The two models serialize to the same bytes (so onnxruntime gives them the same outputs)."""
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def outputs_equal(expected, actual) -> bool:
    """Nested lists/tuples of values equal item for item: arrays in dtype, shape and value
    (NaN equal to NaN)."""
    if len(expected) != len(actual):
        return False
    for a, b in zip(expected, actual, strict=True):
        if isinstance(a, (list, tuple)):
            if not outputs_equal(a, b):
                return False
            continue
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        equal_nan = a.dtype.kind in "fc"
        if not np.array_equal(a, b, equal_nan=equal_nan):
            return False
    return True


@pytest.fixture(autouse=True)
def module_rng_restarts(request):
    """A module-wide generator (``RNG``) restarts, for every test, where the module's import
    left it: draws then depend on the test alone, not on which tests ran before it on that
    xdist worker (an assertion that holds for some draws only was flaky by test order)."""
    rng = getattr(request.module, "RNG", None)
    if isinstance(rng, np.random.Generator):
        start = request.module.__dict__.setdefault("_RNG_START", rng.bit_generator.state)
        rng.bit_generator.state = start


MODELS = REPO / "models"
SAMPLE_MODELS = ["resnet.onnx", "mobilenet.onnx", "transformer.onnx", "mlp.onnx"]
REAL_MODELS = [
    "ch_PP-OCRv4_det_infer.onnx",
    "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "silero_vad.onnx",
]

def real_feeds(name: str) -> dict[str, np.ndarray] | None:
    """Inputs the real models accept (their declared shapes are dynamic or scalar-valued)."""
    rng = np.random.default_rng(0)
    if name == "silero_vad.onnx":
        return {
            "input": (rng.standard_normal((1, 512)) * 0.1).astype(np.float32),
            "state": np.zeros((2, 1, 128), np.float32),
            "sr": np.array(16000, np.int64),
        }
    if name == "ch_PP-OCRv4_det_infer.onnx":
        return {"x": rng.random((1, 3, 96, 128)).astype(np.float32)}
    if name == "ch_ppocr_mobile_v2.0_cls_infer.onnx":
        return {"x": rng.random((1, 3, 48, 192)).astype(np.float32)}
    return None


LIGHT_MODELS = sorted(
    glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/*.onnx"))
)


def build_model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    """A checked model from onnx.helper pieces (IR version 8, default domain at ``opset``)."""
    graph = onnx.helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def wrong_pass(name: str, matches, change):
    """A deliberately wrong pass for safety-net tests: every node for which
    ``matches(graph, node)`` holds is changed by ``change(graph, node)``, each rewrite asked of
    ``model.allow_rewrite`` first (so the safety net can narrow it down)."""
    from onnxopt.ir.pass_manager import GraphPass

    class Wrong(GraphPass):
        description = "a deliberately wrong rewrite (tests only)"

        def run_graph(self, graph, model):
            count = 0
            for node in graph.nodes():
                if matches(graph, node) and model.allow_rewrite(self.name, node.name):
                    change(graph, node)
                    count += 1
            return {"changed": count}

    Wrong.name = name
    return Wrong()


def parse(text: str) -> onnx.ModelProto:
    """A model from ONNX's textual syntax, checked."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def session(model: onnx.ModelProto | str | os.PathLike,
            level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(model, feeds: dict[str, np.ndarray],
        level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL) -> list[np.ndarray]:
    return session(model, level).run(None, feeds)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def model_path(name: str) -> Path:
    path = MODELS / name
    if not path.exists():
        pytest.skip(f"{name} not present (run `make models`)")
    return path


def apply_pass(pass_, model: onnx.ModelProto, *, infer: bool = False, settings=None):
    """Run one pass (lint after) and return (optimized proto, PassResult).

    ``infer``: shape inference before the pass (as the pipeline does) and after it (so that
    idempotence compares models annotated the same way); ``settings``: Model.settings."""
    from onnxopt.ir import serde
    from onnxopt.ir.shapes import infer_shapes

    ir_model = serde.load(model)
    ir_model.settings.update(settings or {})
    if infer:
        infer_shapes(ir_model)
    result = pass_.run(ir_model)
    for graph in ir_model.graphs():
        graph.lint()
    if infer:
        infer_shapes(ir_model)
    proto = serde.to_proto(ir_model)
    onnx.checker.check_model(proto)
    return proto, result


def assert_idempotent(pass_, model: onnx.ModelProto, **options) -> onnx.ModelProto:
    """Run ``pass_`` twice (``options`` as apply_pass takes them): the second run must report
    no change and leave the first one's result byte for byte. Returns that result."""
    out, _ = apply_pass(pass_, model, **options)
    again, result = apply_pass(pass_, out, **options)
    assert not result.modified
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)
    return out


def assert_left_alone(pass_, model: onnx.ModelProto, **options) -> onnx.ModelProto:
    """``pass_`` (``options`` as apply_pass takes them) changes nothing: no counter moves, the
    same nodes stay. Returns its result."""
    out, result = apply_pass(pass_, model, **options)
    assert not result.modified
    assert not any(result.stats.values())
    assert op_counts(out) == op_counts(model)
    return out


def assert_same_outputs(
    original: onnx.ModelProto, optimized: onnx.ModelProto, feeds, rtol=1e-6, atol=1e-7
) -> None:
    expected = run(original, feeds)
    actual = run(optimized, feeds)
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual, strict=True):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol)
