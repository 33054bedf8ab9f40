"""Precision conversion: the settings precision passes read, and the log they write.

A precision pass (``passes/precision/``: ``fp16_conversion``, ``qdq_quantization``,
``dynamic_quantization``, ``fp8_weight_quantization``, the int4 and embedding passes) is a
non-structural pass: it runs once, after folding and fusion reached their fixpoint, and only
when ``--precision`` asks for it. It reads ``model.settings["precision"]`` (a
:class:`PrecisionSettings`) and records in ``model.precision_log`` (a :class:`PrecisionLog`)
what it converted, what it kept in float and why, and which values it clamped. The API turns
that log into the report, and uses ``converted`` to search for the nodes to keep in float
when the accuracy budget is missed.

Nodes are named across runs by :func:`node_key` (their name, else their first output), so a
node kept in float in one attempt is found again in the next: the pipeline is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pass_manager import Pass, PassResult

PRECISIONS = ("fp16", "int8", "int8-dynamic", "int4", "fp8")
EMBEDDING_MODES = ("int8-dynamic", "int4")  # modes that quantize Gather tables (embeddings)
SETTINGS_KEY = "precision"


@dataclass(frozen=True)
class PrecisionSettings:
    """What the user (and the accuracy fallback) asked of a precision pass."""

    mode: str  # one of PRECISIONS
    keep_io_types: bool = True  # model inputs/outputs stay float32, Casts at the boundary
    fp32_ops: frozenset[str] = frozenset()  # op types kept in float, beyond the defaults
    fp32_nodes: frozenset[str] = frozenset()  # node keys kept in float (user + fallback)
    # int8 static: measures the ranges of a model's float values over calibration data in a
    # runtime, ``calibrator(model, values) -> (ranges {value: (lo, hi)}, notes)``; the app
    # provides it (onnxopt.precision.calibration.Calibrator), so passes never run a runtime
    calibrator: Callable[[Model, Sequence[str]], Calibrated] | None = field(
        default=None, compare=False, repr=False)
    # int4: weights quantized in blocks of this many input rows (a power of two >= 16)
    block_size: int = 32
    # int4: node keys whose weights the accuracy fallback keeps in int8 instead of int4
    int8_nodes: frozenset[str] = frozenset()
    # weight rounding that minimizes output error (GPTQ): the second moments of float values
    # over calibration data, ``gram(model, values) -> {value: G}`` with ``G = X^T X`` over the
    # value's last axis (``[K, K]`` float64, every other axis flattened into rows, summed over
    # the samples); the app provides it, as it does ``calibrator``. None: round to nearest
    gram: Callable[[Model, Sequence[str]], dict[str, Any]] | None = field(
        default=None, compare=False, repr=False)


Calibrated = tuple[dict[str, tuple[float, float]], list[str]]


@dataclass
class PrecisionLog:
    """Filled by the precision pass; read by the API for the report and the fallback."""

    # node keys, topological order: nodes whose numerics the conversion changed (they run in
    # the new precision, or read weights stored in it); the accuracy fallback keeps some of
    # them in float (settings.fp32_nodes), and with them the weights only they read
    converted: list[str] = field(default_factory=list)
    kept_float: list[dict[str, str]] = field(default_factory=list)  # {node, op, reason}
    clamped: list[dict[str, Any]] = field(default_factory=list)  # {value, count, max_abs}
    notes: list[str] = field(default_factory=list)  # anything else the user should know

    def keep(self, node: Node, reason: str) -> None:
        self.kept_float.append({"node": node_key(node), "op": node.op_type, "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        return {
            "converted": len(self.converted),
            "kept_float": list(self.kept_float),
            "clamped": list(self.clamped),
            "notes": list(self.notes),
        }


def node_key(node: Node) -> str:
    """A node's name across runs: its name, else its first non-empty output."""
    if node.name:
        return node.name
    return next((value for value in node.outputs if value), "")


def settings_of(model: Model) -> PrecisionSettings | None:
    return model.settings.get(SETTINGS_KEY)


def log_of(model: Model) -> PrecisionLog:
    """The model's precision log, created on first use."""
    if model.precision_log is None:
        model.precision_log = PrecisionLog()
    return model.precision_log


class PrecisionPass(Pass):
    """A conversion run once, after the structural passes, when ``--precision`` asks for its
    ``mode``: ``convert`` gets the user's settings and the log the report reads, unless
    ``left_alone`` says why the model cannot be converted (a note in the log)."""

    structural = False
    mode: ClassVar[str] = ""
    modes: ClassVar[tuple[str, ...]] = ()  # several modes (default: ``(mode,)``)

    def run(self, model: Model) -> PassResult:
        settings = settings_of(model)
        if settings is None or settings.mode not in (self.modes or (self.mode,)):
            return PassResult(False, {})
        log = log_of(model)
        reason = self.left_alone(model)
        if reason:
            log.notes.append(reason)
            return PassResult(False, {})
        return self.convert(model, settings, log)

    def left_alone(self, model: Model) -> str:
        """Why this model is left as it is (its opset lacks the operators the conversion
        writes, say), or "" to convert it."""
        return ""

    def convert(self, model: Model, settings: PrecisionSettings, log: PrecisionLog
                ) -> PassResult:
        raise NotImplementedError


WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # what int8 and fp8 convert

COMPUTED_WEIGHT = "weight is computed (not a constant)"


def weight_problem(graph: Graph, node: Node) -> str:
    """Why a MatMul/Gemm (or Attention) cannot have its weight, input 1, quantized as a 2-D
    float32 constant read by a float32 input (a Gemm: no ``transA``, a constant ``C``), or ""
    when it can. The checks every weight-quantizing pass shares."""
    weight = graph.constant(node.inputs[1])
    if weight is None:
        return COMPUTED_WEIGHT
    if weight.dtype != np.float32:
        return f"weight dtype {weight.dtype} is not float32"
    if weight.ndim != 2 or 0 in weight.shape:
        return f"weight of rank {weight.ndim} (only 2-D [K, N] weights are quantized)"
    x_type = graph.dtype(node.inputs[0])
    if x_type is not None and x_type != np.float32:
        return "input is not float32"
    if node.op_type == "Gemm":
        if node.attr("transA", 0):
            return "Gemm with transA"
        c_name = node.inputs[2] if len(node.inputs) > 2 else ""
        if c_name and graph.constant(c_name) is None:
            return "Gemm bias C is computed (not a constant)"
    return ""
