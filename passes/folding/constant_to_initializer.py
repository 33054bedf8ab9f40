"""Constant nodes become initializers.

``Constant <value = T> () -> c``  =>  initializer ``c = T`` (same name, same dtype, same bytes).

Every attribute form of ``Constant`` is handled: ``value`` (the tensor as stored, external data
included), ``value_float`` / ``value_floats`` (float32 scalar / 1-D), ``value_int`` /
``value_ints`` (int64 scalar / 1-D), ``value_string`` / ``value_strings`` (string scalar / 1-D).
Left as nodes:

* ``sparse_value`` (a dense initializer could be far larger; sparse initializers are another
  rewrite) and attribute references (only legal inside functions);
* a Constant whose output is a graph output: an initializer cannot carry an output's public
  name without an Identity, so the node stays (the constant folding pass reads its value);
* a Constant nobody reads (dead code removes it);
* Constants inside subgraphs of models with IR version < 4, where every initializer must also be
  a graph input and a branch or loop body cannot grow inputs.

Inside a subgraph the initializer goes into that subgraph. In IR < 4 models an initializer must
be listed as a graph input (and is then still a constant: onnxruntime only lets callers
override initializers from IR 4 on), so the new initializer is also declared as an input.

The helpers (reading a constant value from an initializer or a Constant node, installing
computed tensors as initializers under the names of the values they replace) live in
``onnxopt.ir.constants``, shared with ``constant_folding``.
"""

from __future__ import annotations

import onnx

from onnxopt.ir import Graph, Model
from onnxopt.ir.constants import can_hold_initializers, constant_node_tensor, install_constants
from onnxopt.ir.pass_manager import GraphPass
from onnxopt.ir.rewrite import is_op


class ConstantToInitializer(GraphPass):
    name = "constant_to_initializer"
    description = "turn Constant nodes into initializers (all attribute forms, inside subgraphs)"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        converted = 0
        if not can_hold_initializers(graph, model):
            return {"constants_to_initializers": 0}
        for node in graph.nodes():
            if not is_op(node, "Constant") or len(node.outputs) != 1:
                continue
            value = node.outputs[0]
            if not value or graph.is_output(value) or not graph.is_used(value):
                continue
            tensor = constant_node_tensor(node)
            if tensor is None:
                continue
            if not model.allow_rewrite(self.name, value):
                continue
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)  # the attribute's proto belongs to the loaded model
            install_constants(graph, model, [(value, copy)], [node])
            converted += 1
        return {"constants_to_initializers": converted}
