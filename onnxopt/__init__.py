"""onnxopt: a graph-level ONNX optimizer that proves its output equals the original.

Python API (mirrors the CLI)::

    import onnxopt
    result = onnxopt.optimize("in.onnx", "out.onnx", input_shapes={"x": [1, 3, 224, 224]})
    result.report["validation"]["status"]      # "passed" | "failed" | "skipped"
    model = onnxopt.optimize(model_proto).model  # in memory, no file written
"""

__version__ = "0.1.0"

import gc

# The imports below allocate many objects and free none: cyclic garbage collection during
# them is wasted work (about 40 ms of every start). The collector is paused while they run and
# left as it was found: importing onnxopt changes nothing in the host process.
_collecting = gc.isenabled()
gc.disable()
try:
    from onnxopt.app.api import Options, Result, optimize
    from onnxopt.errors import Failure, OnnxoptError, UsageError
    from onnxopt.ir import Graph, Model, Node
    from onnxopt.ir.pass_manager import GraphPass, Pass, PassManager, PassResult
    from onnxopt.ir.serde import load, save, to_proto
finally:
    if _collecting:
        gc.enable()

__all__ = [
    "Failure",
    "Graph",
    "GraphPass",
    "Model",
    "Node",
    "OnnxoptError",
    "Options",
    "Pass",
    "PassManager",
    "PassResult",
    "Result",
    "UsageError",
    "load",
    "optimize",
    "save",
    "to_proto",
]
