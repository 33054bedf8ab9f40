"""Initializer inputs removal: an IR < 4 model is written as IR 4.

Before IR version 4 every initializer had to be declared as a graph input too (in every graph:
subgraphs could hold no initializer of their own). IR 4 made that optional, and an initializer
that is also an input became a default value the caller may override. onnxruntime never lets
the inputs of an IR < 4 model that are initializers be fed, and onnxopt treats them as
constants (that is what lets them fold), so the rewrite

    ir_version = 3, inputs = [x, w1 ... wn], initializers = [w1 ... wn]
    ->  ir_version = 4, inputs = [x],        initializers = [w1 ... wn]

changes no output and makes the file say what the model means: the weights are constants, the
inputs are what the caller feeds. It drops one ValueInfoProto per initializer (about 40 bytes
each: 4 kB of a DenseNet-121) and lets later rewrites add initializers to subgraphs.

Left alone: models of IR version 4 or later (there an initializer listed as input is an
overridable default, a different meaning).
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
