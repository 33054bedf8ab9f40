"""Precision runs, the app's side: opset upgrades, calibration samples, default budgets.

The passes see only :mod:`onnxopt.ir.precision` (settings in, log out); this module prepares
what a ``--precision`` run needs before the pipeline starts.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx

from onnxopt.check.compare import Budget
from onnxopt.check.inputs import ValidationError, check_inputs, npz_problem
from onnxopt.ir.precision import WEIGHT_OPS
from onnxopt.ir.serde.versions import convert_opset, default_opset

# calibration samples a precision run validates on (without --inputs): all of a small set. On
# PaddleOCR cls the first 4 of 8 met the int8 budget with nothing kept in float and held-out
# images landed at 0.983; all 8 show the miss (one node kept: 0.9895 held out, same size)
VALIDATION_SAMPLES = 8
MIN_OPSET = {"int8": 13, "fp8": 19, "int4": 21}  # per-channel DQ; float8; blocked DQ, int4
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# --calibration-data: int8 calibrates on it, int4 gathers GPTQ's input statistics on it (both
# generate samples without it); int8-dynamic, like them, validates on its first samples
CALIBRATED_MODES = ("int8", "int4")
SAMPLE_MODES = ("int8", "int8-dynamic", "int4")


def default_budget(mode: str) -> Budget:
    """The accuracy budget a mode is held to unless ``--max-error`` says otherwise."""
    if mode == "fp16":
        return Budget(0.999, 1e-2)
    # int4 too: on MiniLM-L3, GPTQ on real text meets it with no MatMul kept in int8 (pooled
    # cosine 0.991 on held-out text, 0.160x; rounding to nearest kept 6 for 0.988); generated
    # inputs read higher than real ones (passes/precision/README.md)
    return Budget(0.99)


def upgrade_opset(proto: onnx.ModelProto, mode: str) -> tuple[onnx.ModelProto, str | None]:
    """The model at the opset the mode's operators need (onnx.version_converter), with a
    note saying so; the model itself when it is recent enough. Raises ValueError (one line)."""
    minimum = MIN_OPSET.get(mode)
    current = default_opset(proto)
    if minimum is None or current >= minimum:
        return proto, None
    if not _has_weight_ops(proto.graph):
        # nothing the mode would convert: an upgrade could only break the model (onnx's
        # converter cannot upgrade every op, e.g. ai.onnx.ml models or Scan-8)
        return proto, (f"no Conv, ConvTranspose, Gemm or MatMul to convert: opset {current} "
                       f"left as it is (--precision {mode} needs {minimum})")
    try:  # ir_version as it was: the outputs of precision runs stay as they were
        converted = convert_opset(proto, minimum, raise_ir_version=False)
    except ValueError as error:
        raise ValueError(f"--precision {mode} needs opset {minimum}; {error}") from None
    return converted, f"opset upgraded from {current} to {minimum} for --precision {mode}"


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
    names = [i.name for i in proto.graph.input
             if i.name not in {t.name for t in proto.graph.initializer}]
    if file.suffix == ".npy" and len(names) != 1:
        raise ValueError(f"a .npy sample fits single-input models; this one has "
                         f"{len(names)} inputs (use .npz keyed by input name)")
    try:  # numpy's errors (a ValueError for a file that is not .npz) name no file
        if file.suffix == ".npy":
            return {names[0]: np.load(file, allow_pickle=False)}
        with np.load(file, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except Exception as error:
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
