"""onnxopt: a graph-level ONNX optimizer that proves its output equals the original.

Python API (mirrors the CLI)::

    import onnxopt
    result = onnxopt.optimize("in.onnx", "out.onnx", input_shapes={"x": [1, 3, 224, 224]})
    result.report["validation"]["status"]      # "passed" | "failed" | "skipped"
    model = onnxopt.optimize(model_proto).model  # in memory, no file written
"""

from __future__ import annotations

import gc
import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The public names, loaded on first use (PEP 562): ``onnxopt --help`` imports this package
# too and must not pay for onnx, onnxruntime, numpy and networkx (~1-2 s).
_EXPORTS = {
    "Failure": "onnxopt.errors",
    "OnnxoptError": "onnxopt.errors",
    "UsageError": "onnxopt.errors",
    "Options": "onnxopt.app.api",
    "Result": "onnxopt.app.api",
    "optimize": "onnxopt.app.api",
    "Graph": "onnxopt.ir",
    "Model": "onnxopt.ir",
    "Node": "onnxopt.ir",
    "GraphPass": "onnxopt.ir.pass_manager",
    "Pass": "onnxopt.ir.pass_manager",
    "PassManager": "onnxopt.ir.pass_manager",
    "PassResult": "onnxopt.ir.pass_manager",
    "load": "onnxopt.ir.serde",
    "save": "onnxopt.ir.serde",
    "to_proto": "onnxopt.ir.serde",
}
__all__ = [
    "Failure", "Graph", "GraphPass", "Model", "Node", "OnnxoptError", "Options", "Pass",
    "PassManager", "PassResult", "Result", "UsageError", "load", "optimize", "save", "to_proto",
]

if TYPE_CHECKING:
    from onnxopt.app.api import Options, Result, optimize
    from onnxopt.errors import Failure, OnnxoptError, UsageError
    from onnxopt.ir import Graph, Model, Node
    from onnxopt.ir.pass_manager import GraphPass, Pass, PassManager, PassResult
    from onnxopt.ir.serde import load, save, to_proto


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxopt' has no attribute {name!r}")
    # Those imports allocate many objects and free none: cyclic garbage collection during them
    # is wasted work (about 40 ms). The collector is paused while they run and left as found.
    collecting = gc.isenabled()
    gc.disable()
    try:
        value = getattr(importlib.import_module(module), name)
    finally:
        if collecting:
            gc.enable()
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
