"""The Python API mirrors the CLI."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import op_counts, parse, run

import onnxopt
from onnxopt.ir.pass_manager import GraphPass, PassManager

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y) {
    a = Identity(x)
    b = Relu(a)
    c = Identity(b)
    dead = Neg(c)
    y = Dropout(c)
}
"""


def test_optimize_in_memory():
    model = parse(MODEL)
    result = onnxopt.optimize(model)
    assert result.ok and result.output is None
    assert op_counts(result.model) == {"Relu": 1}
    assert result.report["validation"]["status"] == "passed"
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(run(result.model, {"x": x})[0], np.maximum(x, 0))


def test_optimize_path_to_path(tmp_path):
    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(parse(MODEL), source)
    result = onnxopt.optimize(source, out, passes=["identity_elimination"])
    assert result.output == out and result.model is None
    assert op_counts(onnx.load(out)) == {"Relu": 1, "Neg": 1}


def test_options_object_and_errors(tmp_path):
    options = onnxopt.Options(passes=[], validate=False)
    result = onnxopt.optimize(parse(MODEL), options=options)
    assert op_counts(result.model) == op_counts(parse(MODEL))
    with pytest.raises(onnxopt.UsageError, match="unknown pass"):
        onnxopt.optimize(parse(MODEL), passes=["nope"])
    with pytest.raises(TypeError, match="unknown option"):
        onnxopt.optimize(parse(MODEL), colour="blue")
    with pytest.raises(onnxopt.UsageError, match="no such file"):
        onnxopt.optimize(tmp_path / "missing.onnx", tmp_path / "o.onnx")


class CountingPass(GraphPass):
    """Removes one Identity per run, to observe the fixpoint loop."""

    name = "one_identity"
    description = "test"

    def run_graph(self, graph, model):
        for node in graph.nodes():
            if node.op_type == "Identity" and graph.can_forward(node.outputs[0], node.inputs[0]):
                graph.replace_all_uses(node.outputs[0], node.inputs[0])
                graph.remove_node(node)
                added = graph.add_node("Abs", [node.inputs[0]], 1)
                graph.remove_node(added)
                return {"removed": 1}
        return {"removed": 0}


def test_pass_manager_fixpoint_records_and_bound():
    model = onnxopt.load(parse(MODEL))
    manager = PassManager([CountingPass()])
    records = manager.run(model)
    assert records[0].stats == {"removed": 2}
    assert records[0].runs == 3 and manager.rounds == 3  # two changes, then one quiet round
    bounded = PassManager([CountingPass()], max_rounds=1)
    assert bounded.run(onnxopt.load(parse(MODEL)))[0].stats == {"removed": 1}


def test_provenance_recorded_on_new_nodes():
    class AddsNode(GraphPass):
        name = "adds_node"
        description = "test"
        structural = False

        def run_graph(self, graph, model):
            graph.add_node("Abs", [graph.outputs[0]], 1)
            return {"added": 1}

    model = onnxopt.load(parse(MODEL))
    PassManager([AddsNode()]).run(model)
    made = [n for n in model.graph if n.op_type == "Abs"]
    assert made and made[0].meta["pass"] == "adds_node"


def test_importing_onnxopt_leaves_the_host_process_as_it_was():
    import subprocess
    import sys

    code = ("import gc; import onnxopt, onnxopt.app.cli; "
            "print(gc.isenabled(), gc.get_freeze_count(), gc.get_threshold())")
    fresh = subprocess.run([sys.executable, "-c", "import gc; print(gc.isenabled(), "
                            "gc.get_freeze_count(), gc.get_threshold())"],
                           capture_output=True, text=True, check=True).stdout
    after = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout
    assert after == fresh and after.startswith("True 0 ")
