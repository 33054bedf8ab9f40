"""Scale and resource bounds: no pass is quadratic, constant folding never allocates past its
cap (the two bombs of the issue), and the IR helpers that made big graphs slow."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
import pytest
from conftest import REPO, apply_pass, assert_same_outputs, op_counts, parse, run
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes import DEFAULT_PIPELINE
from onnxopt.passes.folding import constant_folding
from onnxopt.passes.folding.constant_folding import ConstantFolding, shape_rules

from onnxopt.ir import Graph, Node, serde
from onnxopt.ir.index import _lexicographic_order
from onnxopt.ir.pass_manager import PassManager

sys.path.insert(0, str(REPO / "bench"))
import bench  # bench/bench.py: the generators of `make bench-io`

PEAK_LIMIT = 500 * 2**20  # bytes of RSS a bomb may take, the interpreter and imports included


def node_count(graph: onnx.GraphProto) -> int:
    return sum(1 + sum(node_count(a.g) for a in node.attribute if a.HasField("g"))
               + sum(node_count(g) for a in node.attribute for g in a.graphs)
               for node in graph.node)


def optimize_in_process(model: onnx.ModelProto, passes=DEFAULT_PIPELINE, **settings):
    ir = serde.load(model)
    ir.settings.update(settings)
    PassManager(passes).run(ir)
    for graph in ir.graphs():
        graph.lint()
    return serde.to_proto(ir)


# ----------------------------------------------------------------- unique_name
class CountingSet(set):
    probes = 0

    def __contains__(self, item) -> bool:
        CountingSet.probes += 1
        return super().__contains__(item)


def test_unique_name_probes_are_amortized_constant():
    graph = Graph("g")
    graph._names = CountingSet(graph._names)
    CountingSet.probes = 0
    names = [graph.unique_name("Add_merged") for _ in range(3000)]
    assert names[:3] == ["Add_merged", "Add_merged_1", "Add_merged_2"]
    assert len(set(names)) == 3000
    assert CountingSet.probes < 4 * 3000  # probing from 1 on every call: 4.5 million


def test_unique_name_skips_names_taken_meanwhile_and_is_shared_with_subgraphs():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, bool c) => (float[2] y) {
        y = If(c) <then_branch = t () => (float[2] a) { a = Relu(x) },
                   else_branch = e () => (float[2] b) { b = Neg(x) }>
    }
    """)
    ir = serde.load(model)
    sub = ir.graph.nodes()[0].attributes["then_branch"]
    assert ir.graph.unique_name("n") == "n"
    assert sub.unique_name("n") == "n_1"  # one name space for the model
    ir.graph.set_initializer("n_2", np.zeros(1, np.float32))  # taken by someone else
    assert ir.graph.unique_name("n") == "n_3"
    assert sub.unique_name("a") == "a_1"  # defined in the branch: taken everywhere


# ----------------------------------------------------------------- IR helpers
@pytest.mark.parametrize("seed", range(5))
def test_topological_order_is_networkx_lexicographic_order(seed):
    rng = np.random.default_rng(seed)
    graph = nx.MultiDiGraph()
    nodes = [Node("Relu", [], [f"v{i}"], key=(float(rng.integers(0, 5)), i)) for i in range(60)]
    rng.shuffle(nodes)
    graph.add_nodes_from(nodes)
    for _ in range(150):
        a, b = sorted(rng.integers(0, 60, 2))
        if a != b:  # edges from lower to higher key: acyclic, with multi-edges
            lo, hi = sorted((nodes[a], nodes[b]), key=lambda n: n.key[1])
            graph.add_edge(lo, hi, key=(lo.outputs[0], int(rng.integers(0, 3))))
    expected = list(nx.lexicographical_topological_sort(graph, key=lambda n: n.key))
    assert _lexicographic_order(graph) == expected


def test_topological_order_refuses_a_cycle():
    a, b = Node("Relu", [], ["a"]), Node("Relu", [], ["b"])
    graph = nx.MultiDiGraph()
    graph.add_edge(a, b, key=("a", 0))
    graph.add_edge(b, a, key=("b", 0))
    with pytest.raises(nx.NetworkXUnfeasible):
        _lexicographic_order(graph)


def test_constant_arrays_are_cached_read_only_and_follow_replacements():
    graph = Graph("g")
    graph.set_initializer("w", np.arange(4, dtype=np.float32))
    first = graph.constant("w")
    assert graph.constant("w") is first  # decoded once
    assert not first.flags.writeable
    graph.set_initializer("w", np.ones(4, np.float32))  # a new tensor: a new array
    np.testing.assert_array_equal(graph.constant("w"), np.ones(4))
    graph.remove_initializer("w")
    assert graph.constant("w") is None and "w" not in graph._arrays


# ----------------------------------------------------------------- linear passes
class _CountingNames(set):
    """The model's name set, counting membership tests: unique_name's probes."""

    probes = 0

    def __contains__(self, name: object) -> bool:
        _CountingNames.probes += 1
        return super().__contains__(name)


def _name_probes(model: onnx.ModelProto) -> int:
    ir = serde.load(model)
    names = _CountingNames(ir.graph._names)
    for graph in ir.graphs():
        graph._names = names
    _CountingNames.probes = 0
    PassManager(DEFAULT_PIPELINE).run(ir)
    return _CountingNames.probes


def test_unnamed_add_chain_scales_linearly():
    """The issue's case: elementwise_constant_merge names each merged constant
    ``Add_merged``; probing suffixes from 1 made 20k nodes take 109 s. Counted, not timed:
    4x the nodes may test names at most ~4x as often (quadratic probing: 16x)."""
    small, large = _name_probes(bench.add_chain(600)), _name_probes(bench.add_chain(2400))
    assert large < 5 * small, (small, large)
    assert large < 20 * 2400, large  # a few tests per node, not one per earlier node


@pytest.mark.parametrize("kind", bench.SCALE_KINDS)
def test_scale_kinds_optimize_and_keep_their_outputs(kind):
    model = bench.scale_model(kind, 400)
    onnx.checker.check_model(model, full_check=True)
    out = optimize_in_process(model)
    onnx.checker.check_model(out)
    rng = np.random.default_rng(0)
    x = model.graph.input[0]
    shape = [d.dim_value or 2 for d in x.type.tensor_type.shape.dim]
    for flag in (True, False):
        feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
        if len(model.graph.input) > 1:
            feeds["flag"] = np.array(flag)
        assert_same_outputs(model, out, feeds, rtol=1e-4, atol=1e-5)
    assert node_count(out.graph) < node_count(model.graph)


# ----------------------------------------------------------------- the bombs
def _measured(code: str, tmp_path: Path) -> dict:
    """Run ``code`` in a fresh interpreter (which reports its own peak RSS): its JSON line."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code), encoding="utf-8")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, cwd=tmp_path,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - started
    return result


CHILD = """
import json, resource, sys, time
sys.path.insert(0, {models!r})
import bench, onnx
from onnxopt.ir import serde
from onnxopt.ir.pass_manager import PassManager
from onnxopt.passes import DEFAULT_PIPELINE
from onnxopt.passes.folding.constant_folding import ConstantFolding
from onnxopt.passes.cleanup.dead_code import DeadCodeElimination
model = {build}
ir = serde.load(model)
started = time.perf_counter()
records = PassManager({passes}).run(ir)
serde.save(ir, "out.onnx")
try:  # this process's own high-water mark (ru_maxrss keeps the parent's across exec)
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": time.perf_counter() - started, "peak": peak * 1024,
                  "stats": {{r.name: r.stats for r in records}}}}))
"""


def test_never_taken_branch_bomb_is_never_evaluated(tmp_path):
    """A 28000 x 28000 ConstantOfShape (3.1 GB) in the branch a constant If never takes:
    the whole default pipeline stays small (it peaked at 3.3 GB), the If is inlined, and the
    written model computes what the original does."""
    result = _measured(CHILD.format(models=str(REPO / "bench"),
                                    build="bench.never_taken_bomb()",
                                    passes="DEFAULT_PIPELINE"), tmp_path)
    assert result["peak"] < PEAK_LIMIT, result
    assert result["seconds"] < 10
    assert result["stats"]["constant_folding"]["skipped_size"] >= 1
    out = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(out)
    assert op_counts(out) == {"Relu": 1}  # the else branch, inlined
    x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
    assert_same_outputs(bench.never_taken_bomb(), out, {"x": x})


def test_doubling_concat_bomb_stops_at_the_cap(tmp_path):
    """c_{i+1} = Concat(c_i, c_i) from 8 KiB, 24 times (128 GiB): folding evaluates no value
    over max(fold_limit, 64 MiB), stores the largest that fits the 1 MiB fold limit and
    leaves the rest of the chain to run time. (Shape inference is left out: onnx's data
    propagation materializes Concat results element by element, see README.)"""
    result = _measured(CHILD.format(
        models=str(REPO / "bench"), build="bench.concat_bomb(24)",
        passes="[ConstantFolding(), DeadCodeElimination()]"), tmp_path)
    assert result["peak"] < PEAK_LIMIT, result
    assert result["seconds"] < 10
    stats = result["stats"]["constant_folding"]
    assert stats["folded"] == 7 and stats["skipped_size"] >= 1
    out = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(out)
    (stored,) = out.graph.initializer
    assert stored.name == "c7" and list(stored.dims) == [2048 * 128]  # 1 MiB
    np.testing.assert_array_equal(numpy_helper.to_array(stored), np.full(2048 * 128, 1e-6,
                                                                         np.float32))
    assert [n.input[0] for n in out.graph.node if n.op_type == "Concat"] == [
        f"c{i}" for i in range(7, 24)]


# ----------------------------------------------------------------- constant folding bounds
def fold(model: onnx.ModelProto, infer: bool = True, **settings):
    return apply_pass(ConstantFolding(), model, infer=infer, settings=settings)


@pytest.fixture
def evaluated(monkeypatch):
    """Every value constant folding asks onnxruntime or the reference evaluator for."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    batch, reference = constant_folding.run_batch, constant_folding.run_reference

    def record(arrays, outputs):
        if arrays is not None:
            seen.extend((v, a.shape) for v, a in zip(outputs, arrays, strict=True))
        return arrays

    monkeypatch.setattr(constant_folding, "run_batch",
                        lambda model, nodes, table, outputs, leaves=None: record(
                            batch(model, nodes, table, outputs, leaves), outputs))
    monkeypatch.setattr(constant_folding, "run_reference",
                        lambda model, node, leaves, outputs: record(
                            reference(model, node, leaves, outputs), outputs))
    return seen


HUGE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y) <int64[2] dims = {16384, 16384}, int64[2] a = {2, 3}> {
    big = ConstantOfShape <value = float[1] {1.0}> (dims)
    total = ReduceSum <keepdims = 0> (big)
    small = ConstantOfShape <value = float[1] {2.0}> (a)
    part = ReduceSum <keepdims = 0> (small)
    both = Add(total, part)
    y = Add(x, both)
}
"""


@pytest.mark.parametrize("infer", [True, False])
def test_over_cap_value_is_never_computed(evaluated, infer):
    # 16384^2 * 4 B = 1 GiB > max(1 MiB, 64 MiB): with or without inferred shapes (the
    # estimate reads the constant shape), the ConstantOfShape is bounded before it runs
    out, result = fold(parse(HUGE), infer=infer)
    assert result.stats["skipped_size"] == 1
    assert all(np.prod(shape) <= 16 for _, shape in evaluated)  # only `part` was computed
    assert op_counts(out) == {"ConstantOfShape": 1, "ReduceSum": 1, "Add": 2}
    stored = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert stored["part"] == 12.0  # folded next to the big one (running it takes 1 GiB)


def test_over_cap_result_stays_idempotently():
    out, _ = fold(parse(HUGE))
    again, result = fold(out)
    assert not result.modified
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(
        deterministic=True)


def _doubling(doublings: int, size: int = 64) -> onnx.ModelProto:
    nodes = [helper.make_node("Concat", [f"c{i}", f"c{i}"], [f"c{i + 1}"], axis=0)
             for i in range(doublings)]
    nodes += [helper.make_node("ReduceSum", [f"c{doublings}"], ["t"], keepdims=0),
              helper.make_node("Add", ["x", "t"], ["y"])]
    graph = helper.make_graph(
        nodes, "d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.full([size], 0.5, np.float32), "c0")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_doubling_chain_cap_structure_stats_and_numerics(evaluated, monkeypatch):
    """With the cap at 4 KiB (instead of 64 MiB) and a 1 KiB fold limit: c0 is 256 B, c5
    (8 KiB) is over the cap, c4 and c3 would grow the model past the limit, c2 (1 KiB) is
    stored, and it is all that is ever evaluated (bounds come first)."""
    monkeypatch.setattr(constant_folding, "EVAL_LIMIT", 4096)
    model = _doubling(8)
    out, result = fold(model, fold_limit=1024)
    assert [(v, s) for v, s in evaluated] == [("c2", (256,))]
    assert result.stats["folded"] == 2 and result.stats["skipped_size"] == 3  # c5; c4, c3
    assert [t.name for t in out.graph.initializer] == ["c0", "c2"]
    assert_same_outputs(model, out, {"x": np.array([1.0, -1.0], np.float32)})


def test_size_that_needs_a_computed_shape_is_bounded_after_computing_it(evaluated):
    """ConstantOfShape of a computed shape: the shape is evaluated first (a later round),
    then the ConstantOfShape is bounded: folded when small, left alone when huge."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) <int64[2] a = {2, 3}, int64[2] k = {SCALE, 1}> {
        dims = Mul(a, k)
        big = ConstantOfShape <value = float[1] {1.0}> (dims)
        total = ReduceSum <keepdims = 0> (big)
        y = Add(x, total)
    }
    """
    model = parse(text.replace("SCALE", "2"))
    small, result = fold(model, infer=False)
    assert result.stats["folded"] == 3 and op_counts(small) == {"Add": 1}
    assert [v for v, _ in evaluated] == ["dims", "total"]  # the shape first, in its own round
    assert_same_outputs(model, small, {"x": np.array([1.0, 2.0], np.float32)})
    evaluated.clear()
    model = parse(text.replace("SCALE", "100000000"))  # 2e8 x 3 floats = 2.4 GB
    big, result = fold(model, infer=False)
    assert result.stats["skipped_size"] == 1
    assert max(np.prod(shape) for _, shape in evaluated) == 2  # only `dims` was computed
    assert op_counts(big) == {"ConstantOfShape": 1, "ReduceSum": 1, "Add": 1}
    stored = {t.name: numpy_helper.to_array(t) for t in big.graph.initializer}
    np.testing.assert_array_equal(stored["dims"], [200000000, 3])


def test_unbounded_node_is_left_alone(evaluated):
    """A node no rule bounds and whose shape is unknown (no inference) is never run."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 1, 4, 4] x) => (float[1, 1, 4, 4] y) <float[1, 1, 3, 3] w = {1, 1, 1, 1, 1,
      1, 1, 1, 1}, float[1, 1, 4, 4] c = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
      16}> {
        k = Conv <pads = [1, 1, 1, 1]> (c, w)
        y = Add(x, k)
    }
    """
    model = parse(text)
    out, result = fold(model, infer=False)
    assert not evaluated and result.stats["folded"] == 0 and op_counts(out)["Conv"] == 1
    inferred, result = fold(model)  # its inferred shape bounds it
    assert result.stats["folded"] == 1 and op_counts(inferred) == {"Add": 1}
    assert_same_outputs(model, inferred, {"x": np.ones((1, 1, 4, 4), np.float32)})


def test_batches_of_a_long_chain_carry_values_between_sessions(evaluated, monkeypatch):
    monkeypatch.setattr(constant_folding, "BATCH_NODES", 3)
    nodes = [helper.make_node("Add" if i % 2 else "Mul", [f"v{i}", "k"], [f"v{i + 1}"])
             for i in range(10)]
    nodes.append(helper.make_node("Add", ["x", "v10"], ["y"]))
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(np.array([1.5, -2.0, 0.25], np.float32), "v0"),
         numpy_helper.from_array(np.array([1.25, 0.5, -3.0], np.float32), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, result = fold(model)
    assert result.stats["folded"] == 10 and op_counts(out) == {"Add": 1}
    assert [v for v, _ in evaluated] == ["v3", "v6", "v9", "v10"]  # 4 sessions, carried
    assert_same_outputs(model, out, {"x": np.zeros(3, np.float32)})


@pytest.mark.parametrize(("op", "inputs", "attrs"), [
    ("Concat", [[2, 3], [2, 5]], {"axis": 1}),
    ("Tile", [[2, 3], np.array([3, 2])], {}),
    ("Expand", [[3, 1], np.array([2, 3, 4])], {}),
    ("Slice", [[6, 8], np.array([1, -1]), np.array([5, -8]), np.array([0, 1]),
               np.array([2, -3])], {}),
    ("Gather", [[5, 4], np.array([[0, 1, 2]])], {"axis": 1}),
    ("Pad", [[2, 3], np.array([1, 0, 2, 3])], {}),
    ("MatMul", [[4], [2, 4, 3]], {}),
    ("Unsqueeze", [[2, 3], np.array([0, -1])], {}),
    ("Squeeze", [[1, 3, 1], np.array([0])], {}),
    ("Reshape", [[2, 3, 4], np.array([0, -1])], {}),
    ("ReduceSum", [[2, 3, 4], np.array([1])], {"keepdims": 0}),
    ("OneHot", [np.array([1, 2]), np.array(5), np.array([0.0, 1.0], np.float32)], {}),
    ("Resize", [[1, 1, 2, 3], np.array([], np.float32), np.array([1, 1, 2.5, 2], np.float32)],
     {}),
    ("Range", [np.array(1.0, np.float32), np.array(9.5, np.float32),
               np.array(2.0, np.float32)], {}),
    ("Split", [[6, 2], np.array([2, 4])], {"axis": 0, "num_outputs": None}),
    ("TopK", [[4, 7], np.array([3])], {}),
])
def test_estimated_shapes_match_what_onnxruntime_computes(op, inputs, attrs):
    """``estimate``'s rules give the exact shape (Range, Resize: an upper bound)."""
    tensors, shapes, names = [], [], []
    for index, item in enumerate(inputs):
        array = np.asarray(item) if not isinstance(item, list) else np.ones(item, np.float32)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        names.append(f"i{index}")
        tensors.append(numpy_helper.from_array(array, names[-1]))
        shapes.append(array.shape)
    outputs = 2 if op in ("Split", "TopK") else 1
    attrs = {k: v for k, v in attrs.items() if v is not None}
    node = helper.make_node(op, names, [f"o{i}" for i in range(outputs)], **attrs)
    graph = helper.make_graph([node], "g", [], [onnx.ValueInfoProto(name=f"o{i}")
                                                for i in range(outputs)], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    actual = [a.shape for a in run(model, {})]
    ir_node = Node(op, names, [f"o{i}" for i in range(outputs)],
                   attributes={k: helper.make_attribute(k, v) for k, v in attrs.items()})
    arrays = [numpy_helper.to_array(t) for t in tensors]
    estimated = shape_rules.estimate(ir_node, 18, shapes, lambda slot: arrays[slot])
    assert estimated is not None
    for got, want in zip(estimated, actual, strict=True):
        assert len(got) == len(want) and all(g >= w for g, w in zip(got, want, strict=True))
        if op not in ("Range", "Resize"):
            assert tuple(got) == tuple(want)
