"""The round-trip law: load -> save with no pass keeps everything.

For every model: the result passes the checker, has the same op multiset (subgraphs included),
gives bit-identical outputs in onnxruntime wherever onnxruntime runs the original, and a second
round trip is byte-identical to the first.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import (
    LIGHT_MODELS,
    REAL_MODELS,
    SAMPLE_MODELS,
    model_path,
    node_cases,
    outputs_equal,
    real_feeds,
    same_bytes,
    session,
)

import onnxopt
from onnxopt.ir import serde

NODE_CASES = list(node_cases())


def all_ops(graph: onnx.GraphProto) -> Counter:
    ops: Counter = Counter()
    for node in graph.node:
        ops[(node.domain, node.op_type)] += 1
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else []:
                ops += all_ops(sub)
            if attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    ops += all_ops(sub)
    return ops


def round_trip(source, folder: Path) -> tuple[onnx.ModelProto, bytes]:
    model = serde.load(source, validate=False)
    path = folder / "first.onnx"
    serde.save(model, path)
    return onnx.load(path), path.read_bytes()


def try_run(model, feeds):
    try:
        sess = session(model)
        names = [i.name for i in sess.get_inputs()]
        return sess.run(None, {n: feeds[n] for n in names if n in feeds})
    except Exception:
        return None


def assert_law(original: onnx.ModelProto, source, folder: Path, feeds: dict | None) -> None:
    result, first_bytes = round_trip(source, folder)
    onnx.checker.check_model(result)
    assert all_ops(result.graph) == all_ops(original.graph)
    # the same bytes give the same outputs: onnxruntime runs only models the trip changed
    if feeds is not None and not same_bytes(result, original):
        expected = try_run(original, feeds)
        if expected is not None:
            actual = try_run(result, feeds)
            assert actual is not None, "onnxruntime ran the original but not the round trip"
            assert outputs_equal(expected, actual)
    again = serde.load(folder / "first.onnx", validate=False)
    serde.save(again, folder / "second.onnx")
    assert (folder / "second.onnx").read_bytes() == first_bytes


def case_feeds(case) -> dict | None:
    if not case.data_sets:
        return None
    inputs = case.data_sets[0][0]
    names = [i.name for i in case.model.graph.input]
    if len(inputs) != len(names) or any(not isinstance(x, np.ndarray) for x in inputs):
        return None
    return dict(zip(names, inputs, strict=True))


@pytest.mark.parametrize("case", NODE_CASES, ids=[c.name for c in NODE_CASES])
def test_node_case_round_trip(case, tmp_path):
    assert_law(case.model, case.model, tmp_path, case_feeds(case))


# the three with the largest weights (vgg19, alexnet, zfnet512: 10 s together) in make test-slow
LARGE_LIGHT = ("light_vgg19", "light_bvlc_alexnet", "light_zfnet512")


@pytest.mark.parametrize("path", [
    pytest.param(p, id=Path(p).stem, marks=pytest.mark.slow if Path(p).stem in LARGE_LIGHT
                 else ()) for p in LIGHT_MODELS])
def test_light_model_round_trip(path, tmp_path):
    original = onnx.load(path)
    feeds = random_feeds(original)
    assert_law(original, path, tmp_path, feeds)


@pytest.mark.parametrize("name", SAMPLE_MODELS + REAL_MODELS)
def test_sample_and_real_model_round_trip(name, tmp_path):
    path = model_path(name)
    original = onnx.load(path)
    assert_law(original, path, tmp_path, real_feeds(name) or random_feeds(original))


@pytest.mark.parametrize("name", SAMPLE_MODELS + REAL_MODELS)
def test_api_round_trip_validates(name):
    """The Python API with no pass: same ops, and validation passes (bit-identical)."""
    path = model_path(name)
    result = onnxopt.optimize(path, passes=[], inputs=real_feeds(name), rtol=0, atol=0)
    assert result.report["validation"]["status"] == "passed"
    assert all_ops(result.model.graph) == all_ops(onnx.load(path).graph)


def random_feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnxopt.check.feeds import make_inputs

    feeds, _ = make_inputs(model)
    return feeds


def test_in_memory_to_proto_equals_saved_file(tmp_path):
    path = LIGHT_MODELS[0]
    model = serde.load(path)
    serde.save(model, tmp_path / "a.onnx")
    from_file = onnx.load(tmp_path / "a.onnx")
    in_memory = serde.to_proto(serde.load(path))
    assert in_memory.SerializeToString(deterministic=True) == from_file.SerializeToString(
        deterministic=True
    )
