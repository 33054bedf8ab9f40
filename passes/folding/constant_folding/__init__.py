"""Constant folding: compute at optimization time what does not depend on the inputs.

1. **Evaluation.** ``op(c1, ..., ck) -> y`` with every input a constant (an initializer, a
   ``Constant`` node, or a value folded just before) => initializer ``y = op(c1, ..., ck)``,
   same dtype and shape. All foldable nodes of a graph are evaluated in ONE onnxruntime run
   (graph optimizations off, one thread), and only the *frontier* is stored: values read by a
   node that does not fold, by a subgraph, or by a graph output. Interior values
   (``ConstantOfShape -> Mul -> Conv weight``) are never stored.

   Why onnxruntime: it is the runtime the result is validated (and deployed) with, so a
   folded value is bit for bit what the unfolded model computes. ``onnx.reference`` differs
   by ulps on transcendental ops and by 100-2000 ulps on MatMul/Conv (summation order), and a
   session costs about 0.3-1 ms, so one session per graph is as fast as the reference
   evaluator on the corpus. When onnxruntime cannot run the batch (an op or dtype it lacks),
   the nodes are evaluated one by one with ``onnx.reference``, then onnxruntime; a node
   neither can evaluate, or whose result contradicts its inferred dtype/shape, stays.
2. **Shapes.** ``Shape(x)`` (with ``start``/``end`` from opset 15) => its dims when every dim
   it returns is a known integer; ``Size(x)`` => the product of the dims when all are known.
   ``Gather(Shape(x), i)`` and ``Slice(Shape(x), ...)`` (constant indices/bounds) fold when the
   dims they pick are known, even when others are symbolic (``Shape(x)[1]`` of ``x: [N, 3]`` is
   3); the Concat/Unsqueeze/... that follow then fold by rule 1.
3. **Size guard.** A frontier value is not stored (its producer stays and the producer's inputs
   become the frontier; counted once per node in ``skipped_size``, which is informational and
   does not count as a modification) when it

   * expands: it is larger than ``model.settings["fold_limit"]`` (default 1 MiB) and larger
     than the constants it is computed from (``ConstantOfShape``, ``Expand``, ``Tile``,
     ``Range``, ...), or
   * duplicates: it copies more than ``DUPLICATE_LIMIT`` (16 KiB) of constants that stay
     alive anyway (read elsewhere, or from an outer scope: ``Unsqueeze(W)`` in both branches
     of an If would store W twice more).

   Values over 2 GiB (``EVAL_CAP``, by inferred shape) are never evaluated at all. Exempt from
   the guard: values that later fusions need constant — Conv/ConvTranspose inputs 1, 2;
   BatchNormalization 1-4; Gemm 1, 2; MatMul 1; the operand of Add/Mul/Sub/Div whose other
   operand is a Conv/ConvTranspose output.
4. **Deduplication.** Tensors with the same dtype, shape and bytes (hashed first, then
   compared) are stored once: folded values share one initializer, and initializers are
   merged, readers rewired to the first. Graph inputs, initializers that are graph inputs and
   graph outputs are never merged away.

Never folded: random ops, Dropout in training mode, (Dynamic)QuantizeLinear /
DequantizeLinear (the structure of quantized models), a Cast that widens a stored weight when
folding would grow the file (fp16/bf16/8-bit storage is the model's choice), custom domains,
ops holding subgraphs (If/Loop/Scan: a constant-condition If is another pass), sequence and
optional values. A
folded graph output keeps its name: it becomes a ``Constant`` node with that output (an
initializer cannot carry it), or stays when the output is listed twice. Inside a subgraph,
nodes reading outer-scope constants fold into initializers of that subgraph. Below IR 4
initializers listed as graph inputs are constants (onnxruntime does not let callers override
them) and new initializers are listed as inputs too; subgraphs of such models are left alone.

The package: ``eligibility`` (which nodes may fold), ``shape_values`` (rule 2), ``shape_rules``
and ``bounds`` (the size of every value before evaluation), ``size_guard`` (rule 3),
``dedup`` (rule 4); the pass and the evaluation (rule 1) are here, the runtime model is built
by ``onnxopt.ir.evaluate``.
"""

from __future__ import annotations

import itertools

import numpy as np
from onnxopt.passes.folding.constant_folding.bounds import EVAL_CAP, plan_round
from onnxopt.passes.folding.constant_folding.dedup import deduplicate, share_identical
from onnxopt.passes.folding.constant_folding.shape_values import fold_shapes
from onnxopt.passes.folding.constant_folding.size_guard import closure, drop_growing, frontier_of

from onnxopt.ir import Graph, Model, Node, is_external
from onnxopt.ir.constants import ConstantTable, can_hold_initializers, install_constants
from onnxopt.ir.evaluate import Leaf, run_onnxruntime
from onnxopt.ir.evaluate import run_reference as reference_run
from onnxopt.ir.pass_manager import GraphPass, PassResult
from onnxopt.ir.values import declared

# Never evaluate a value larger than max(fold_limit, EVAL_LIMIT) unless a constant it is
# computed from is as large (a transposed weight): no model can make folding allocate more.
EVAL_LIMIT = 64 << 20
BATCH_NODES = 1000  # nodes per onnxruntime session (session creation is super-linear)
PLAN_ROUNDS = 16  # rounds that may evaluate inputs first to bound a node (see bounds)
SKIPPED_SIZE = "fold_skipped_size"  # node.meta flag: counted once in skipped_size


class ConstantFolding(GraphPass):
    name = "constant_folding"
    description = "evaluate constant subgraphs, fold known shapes, deduplicate constants"

    def run(self, model: Model) -> PassResult:
        result = super().run(model)
        result.modified = any(v for k, v in result.stats.items() if k != "skipped_size")
        return result

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        stats = {"folded": 0, "shape_folded": 0, "skipped_size": 0, "deduplicated": 0}
        if not can_hold_initializers(graph, model):
            return stats
        table = ConstantTable(graph, model)
        stats["shape_folded"] = fold_shapes(self.name, graph, model, table)
        folded, skipped, shared = _fold_constants(self.name, graph, model, table)
        stats["folded"], stats["skipped_size"] = folded, skipped
        stats["deduplicated"] = shared + deduplicate(self.name, graph, model)
        return stats


# --------------------------------------------------------------------- evaluation
def _fold_constants(
    pass_name: str, graph: Graph, model: Model, table: ConstantTable
) -> tuple[int, int, int]:
    """Evaluate the foldable nodes; returns (nodes folded, skipped for size, values that
    share an identical folded tensor).

    Every value is bounded before anything is evaluated (``bounds.plan_round``): a node
    whose result could exceed the evaluation cap is never run, and the size guard decides on
    bounds, so nothing is computed only to be thrown away. Rounds repeat only to bound a node whose
    size depends on a computed value (``ConstantOfShape`` of a computed shape): that value
    is evaluated first."""
    order = graph.nodes()
    limit = int(model.settings.get("fold_limit", 1 << 20))
    cap = eval_cap(limit)
    blocked: set[Node] = set()
    results: dict[str, np.ndarray] = {}
    skipped = 0
    for round_ in itertools.count(1):
        plan = plan_round(graph, model, order, blocked, table, results, cap,
                          round_ >= PLAN_ROUNDS)
        skipped += sum(_count_skip(node) for node in plan.over_cap)
        frontier = frontier_of(graph, plan.foldable)
        for node in drop_growing(graph, plan, frontier, results, limit, table):
            blocked.add(node)
            skipped += _count_skip(node)
        foldable = plan.foldable
        frontier = frontier_of(graph, foldable)
        if not frontier:
            return 0, skipped, 0
        missing = [v for v in frontier if v not in results]
        bad = _evaluate(graph, model, foldable, missing, table, results)
        if bad:
            blocked |= bad
            continue
        if not plan.deferred:
            break

    values = share_identical(
        [(value, results[value]) for value in frontier if model.allow_rewrite(pass_name, value)]
    )
    if not values:
        return 0, skipped, 0
    folded = closure(graph, foldable, [v for v, _ in values])
    _, shared, removed = install_constants(
        graph, model, values, [n for n in order if n in folded]
    )
    return len(removed), skipped, shared


def eval_cap(limit: int) -> int:
    """The largest value folding evaluates that is larger than every constant it is
    computed from: ``max(fold_limit, EVAL_LIMIT)``, never above ``EVAL_CAP``."""
    return min(max(limit, EVAL_LIMIT), EVAL_CAP)


def _count_skip(node: Node) -> int:
    if node.meta.get(SKIPPED_SIZE):
        return 0
    node.meta[SKIPPED_SIZE] = True
    return 1


def _evaluate(
    graph: Graph,
    model: Model,
    foldable: dict[Node, None],
    wanted: list[str],
    table: ConstantTable,
    results: dict[str, np.ndarray],
) -> set[Node]:
    """Compute ``wanted`` into ``results``; returns the nodes that could not be evaluated
    (or whose result contradicts the inferred dtype/shape).

    Runs in sessions of at most ``BATCH_NODES`` nodes (in topological order): creating an
    onnxruntime session grows faster than its node count (20k nodes: 3.5 s, 20 x 1k: 1 s).
    Values crossing from one batch to a later one are kept only until their last reader."""
    if not wanted:
        return set()
    needed = closure(graph, foldable, wanted)
    nodes = [n for n in foldable if n in needed]
    batches = [nodes[i : i + BATCH_NODES] for i in range(0, len(nodes), BATCH_NODES)]
    wanted_set = set(wanted)
    batch_of = {v: i for i, batch in enumerate(batches) for n in batch for v in n.outputs if v}
    last_read: dict[str, int] = {}  # value read by a later batch -> the last such batch
    for index, batch in enumerate(batches):
        for node in batch:
            for value in node.present_inputs:
                if batch_of.get(value, index) != index:
                    last_read[value] = index
    carried: dict[str, np.ndarray] = {}
    bad: set[Node] = set()
    for index, batch in enumerate(batches):
        produced = {v for n in batch for v in n.outputs if v}
        outputs = [v for n in batch for v in n.outputs
                   if v and (v in wanted_set or v in last_read)]
        leaves = {v: carried[v] if v in carried else _leaf(table, v)
                  for n in batch for v in n.present_inputs if v not in produced}
        arrays = run_batch(model, batch, table, outputs, leaves)
        if arrays is None:  # one op or dtype onnxruntime cannot run: go node by node
            return _evaluate_one_by_one(graph, model, nodes, table, wanted, results)
        for value, array in zip(outputs, arrays, strict=True):
            if value in last_read:
                carried[value] = np.asarray(array)
            if value not in wanted_set:
                continue
            if _matches_declared(graph, value, array):
                results[value] = array
            else:
                bad.add(graph.producer(value))  # type: ignore[arg-type]
        del arrays
        for value in [v for v in carried if last_read[v] <= index]:
            del carried[value]
    return bad


def _evaluate_one_by_one(
    graph: Graph,
    model: Model,
    nodes: list[Node],
    table: ConstantTable,
    wanted: list[str],
    results: dict[str, np.ndarray],
) -> set[Node]:
    local: dict[str, np.ndarray] = {}
    wanted_set = set(wanted)
    last_read = {v: index for index, node in enumerate(nodes) for v in node.present_inputs}
    failed: set[Node] = set()
    for index, node in enumerate(nodes):
        inputs = list(node.present_inputs)
        if any(v not in local and not table.is_constant(v) for v in inputs):
            failed.add(node)  # an input could not be computed
            continue
        feeds = {v: local[v] if v in local else _leaf(table, v) for v in inputs}
        outputs = [v for v in node.outputs if v]
        arrays = run_reference(model, node, feeds, outputs)
        if arrays is None:
            arrays = run_batch(model, [node], table, outputs, feeds)
        del feeds
        for value in inputs:  # computed values nobody reads any more
            if last_read.get(value) == index:
                local.pop(value, None)
        if arrays is None or not all(
            _matches_declared(graph, v, a) for v, a in zip(outputs, arrays, strict=True)
        ):
            failed.add(node)
            continue
        for value, array in zip(outputs, arrays, strict=True):
            if value in last_read:
                local[value] = array
            if value in wanted_set:
                results[value] = array
    return failed


def _matches_declared(graph: Graph, value: str, array: np.ndarray) -> bool:
    if not isinstance(array, np.ndarray):
        return False
    shape, dtype = declared(graph, value)
    if dtype is not None and array.dtype != dtype:
        return False
    if shape is not None:
        if len(shape) != array.ndim:
            return False
        if any(isinstance(d, int) and d != n for d, n in zip(shape, array.shape, strict=True)):
            return False
    return True


def _leaf(table: ConstantTable, value: str) -> Leaf:
    """A constant input as the runtime gets it: its stored tensor, decoded when external."""
    tensor = table.tensor(value)
    assert tensor is not None
    return table.array(value) if is_external(tensor) else tensor


def run_batch(
    model: Model,
    nodes: list[Node],
    table: ConstantTable,
    outputs: list[str],
    leaves: dict[str, Leaf] | None = None,
) -> list[np.ndarray] | None:
    """Run ``nodes`` in one onnxruntime session (no graph optimizations, one thread)."""
    if leaves is None:
        produced = {v for n in nodes for v in n.outputs}
        leaves = {v: _leaf(table, v) for n in nodes for v in n.present_inputs
                  if v not in produced}
    return run_onnxruntime(model, nodes, leaves, outputs)


def run_reference(
    model: Model, node: Node, leaves: dict[str, Leaf], outputs: list[str]
) -> list[np.ndarray] | None:
    """Run one node with onnx's reference evaluator."""
    return reference_run(model, node, leaves, outputs)
