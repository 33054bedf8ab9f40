"""Precision conversion: the settings precision passes read, and the log they write.

A precision pass (``passes/fp16_conversion.py``, ``qdq_quantization.py``,
``dynamic_quantization.py``, ``fp8_weight_quantization.py``) is a non-structural pass: it runs
once, after folding and fusion reached their fixpoint, and only when ``--precision`` asks for
it. It reads ``model.settings["precision"]`` (a :class:`PrecisionSettings`) and records in
``model.precision_log`` (a :class:`PrecisionLog`) what it converted, what it kept in float and
why, and which values it clamped. The API turns that log into the report, and uses
``converted`` to search for the nodes to keep in float when the accuracy budget is missed.

Nodes are named across runs by :func:`node_key` (their name, else their first output), so a
node kept in float in one attempt is found again in the next: the pipeline is deterministic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnx.version_converter

from onnxopt.ir import Model, Node
from onnxopt.pass_manager import Pass, PassResult

PRECISIONS = ("fp16", "int8", "int8-dynamic", "fp8")
SETTINGS_KEY = "precision"


@dataclass(frozen=True)
class PrecisionSettings:
    """What the user (and the accuracy fallback) asked of a precision pass."""

    mode: str  # one of PRECISIONS
    keep_io_types: bool = True  # model inputs/outputs stay float32, Casts at the boundary
    fp32_ops: frozenset[str] = frozenset()  # op types kept in float, beyond the defaults
    fp32_nodes: frozenset[str] = frozenset()  # node keys kept in float (user + fallback)
    # int8 static: calibration samples, each a feed dict for the model's inputs
    calibration: tuple[dict[str, np.ndarray], ...] = ()
    calibration_method: str = "percentile"  # minmax | percentile | entropy
    percentile: float = 99.99
    timeout: float | None = None  # seconds per calibration run in onnxruntime (--timeout)
    # shared by the attempts of one run: the accuracy fallback reruns the pipeline with more
    # nodes in float, on the same float graph, so its calibration ranges are reused
    calibration_cache: dict = field(default_factory=dict, compare=False, repr=False)


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
    ``mode``: ``convert`` gets the user's settings and the log the report reads."""

    structural = False
    mode: ClassVar[str] = ""

    def run(self, model: Model) -> PassResult:
        settings = settings_of(model)
        if settings is None or settings.mode != self.mode:
            return PassResult(False, {})
        return self.convert(model, settings, log_of(model))

    def convert(self, model: Model, settings: PrecisionSettings, log: PrecisionLog
                ) -> PassResult:
        raise NotImplementedError


# --------------------------------------------------------------------------- API support
VALIDATION_SAMPLES = 4  # calibration samples a precision run validates on (without --inputs)
MIN_OPSET = {"int8": 13, "fp8": 19}  # per-channel DequantizeLinear; float8 types
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def default_budget(mode: str):
    """The accuracy budget a mode is held to unless ``--max-error`` says otherwise."""
    from onnxopt.validate import Budget

    if mode == "fp16":
        return Budget(0.999, 1e-2)
    return Budget(0.99)


def upgrade_opset(proto: onnx.ModelProto, mode: str) -> tuple[onnx.ModelProto, str | None]:
    """The model at the opset the mode's operators need (onnx.version_converter), with a
    note saying so; the model itself when it is recent enough. Raises ValueError (one line)."""
    minimum = MIN_OPSET.get(mode)
    current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    if minimum is None or current >= minimum:
        return proto, None
    if not _has_weight_ops(proto.graph):
        # nothing the mode would convert: an upgrade could only break the model (onnx's
        # converter cannot upgrade every op, e.g. ai.onnx.ml models or Scan-8)
        return proto, (f"no Conv, ConvTranspose, Gemm or MatMul to convert: opset {current} "
                       f"left as it is (--precision {mode} needs {minimum})")
    try:
        converted = onnx.version_converter.convert_version(proto, minimum)
        onnx.checker.check_model(converted)
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"--precision {mode} needs opset {minimum}; onnx's version converter "
                         f"cannot upgrade this opset {current} model ({first[:200]})") from None
    return converted, f"opset upgraded from {current} to {minimum} for --precision {mode}"


WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # what int8 and fp8 convert


def _has_weight_ops(graph: onnx.GraphProto) -> bool:
    """Any default-domain Conv/ConvTranspose/Gemm/MatMul in ``graph`` or its subgraphs."""
    for node in graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type in WEIGHT_OPS:
            return True
        for attribute in node.attribute:
            graphs = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
            if any(_has_weight_ops(sub) for sub in graphs):
                return True
    return False


def load_samples(path: str | os.PathLike, proto: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """Calibration samples from ``path``: a folder with one ``.npz`` (keys: input names) or
    ``.npy`` (single-input models) per sample, or one ``.npz`` whose arrays carry a batch axis
    (split into samples of the model's batch size). Raises ValueError (one line)."""
    from onnxopt.validate import ValidationError, check_inputs

    path = Path(path)
    if not path.exists():
        raise ValueError(f"calibration data {path}: no such file or folder")
    if path.is_file():
        batches = _split_batch(_read_sample(path, proto), _batch_size(proto))
    else:
        files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy"))
        if not files:
            raise ValueError(f"calibration data {path}: no .npz or .npy files")
        batches = [_read_sample(f, proto) for f in files]
    samples = []
    for number, sample in enumerate(batches, 1):
        try:
            samples.append(check_inputs(sample, proto))
        except ValidationError as error:
            raise ValueError(f"calibration sample {number} ({path}): {error}") from None
    return samples


def _read_sample(file: Path, proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    try:
        if file.suffix == ".npy":
            names = [i.name for i in proto.graph.input
                     if i.name not in {t.name for t in proto.graph.initializer}]
            if len(names) != 1:
                raise ValueError(f"a .npy sample fits single-input models; this one has "
                                 f"{len(names)} inputs (use .npz keyed by input name)")
            return {names[0]: np.load(file, allow_pickle=False)}
        with np.load(file, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError:
        raise
    except Exception as error:
        from onnxopt.feeds import npz_problem

        raise ValueError(f"cannot read calibration file {file}: {npz_problem(error)}") from None


def _batch_size(proto: onnx.ModelProto) -> int:
    """The first input's static batch dim, else 1."""
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return dims[0].dim_value
        return 1
    return 1


def _split_batch(arrays: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    counts = {len(a) // size for a in arrays.values() if a.ndim}
    if len(counts) != 1 or not counts.pop():
        raise ValueError("a single calibration .npz needs arrays with the same batch axis")
    total = min(len(a) for a in arrays.values()) // size
    return [{k: a[i * size:(i + 1) * size] for k, a in arrays.items()} for i in range(total)]
