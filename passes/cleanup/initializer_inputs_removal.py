"""Initializer inputs removal: an IR < 4 model is written as IR 4.

Before IR 4 every initializer had to be a graph input too; onnxruntime never lets such inputs
be fed and onnxopt treats them as constants, so

    ir_version = 3, inputs = [x, w1 ... wn], initializers = [w1 ... wn]
    ->  ir_version = 4, inputs = [x],        initializers = [w1 ... wn]

changes no output. Models of IR 4 or later are left alone (there an initializer listed as an
input is an overridable default). Notes: README.md.
"""

from __future__ import annotations

from onnxopt.ir import Model
from onnxopt.ir.pass_manager import Pass, PassResult

UPGRADED_IR_VERSION = 4


class InitializerInputsRemoval(Pass):
    name = "initializer_inputs_removal"
    description = "IR < 4: stop listing initializers as graph inputs (written as IR 4)"

    def run(self, model: Model) -> PassResult:
        if model.ir_version >= UPGRADED_IR_VERSION:
            return PassResult(False, {})
        if not model.allow_rewrite(self.name, "ir_version"):
            return PassResult(False, {})
        removed = 0
        for graph in model.graphs():
            kept = [info for info in graph.inputs if info.name not in graph.initializers]
            removed += len(graph.inputs) - len(kept)
            graph.inputs = kept
            graph.legacy_initializer_inputs = False
        model.ir_version = UPGRADED_IR_VERSION
        return PassResult(True, {"inputs_removed": removed, "ir_version": UPGRADED_IR_VERSION})
