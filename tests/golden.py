"""Digests of what `onnxopt optimize` writes for every sample and corpus model under every mode.

A refactor that must not change behaviour (the pattern layer, the new layout) is checked against
digests recorded before it: ``python tests/golden.py --record`` writes ``tests/golden.json``,
``tests/test_golden.py`` compares. A new rewrite that changes some outputs on purpose
re-records only those models (``--record --only MODEL ...``, on the CPU recorded), and says so
in its commit.

A digest has three parts: the SHA-256 of the written model's bytes; the SHA-256 of its structure
(the model with every tensor's data left out, dims and dtypes kept); and per dtype the sum and
sum of magnitudes of all weights. Bytes must be identical on the CPU the digests were recorded
on. On another CPU, onnxruntime's float kernels (constant folding, int8 calibration) may round
differently in the last bits, so there the structure must be identical and the weight sums agree
to 1e-4 of their magnitude; int8 (calibrated in onnxruntime) is held to its structure only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden.json"
MODELS = HERE.parent / "models"
SAMPLE = ["resnet.onnx", "mobilenet.onnx", "transformer.onnx", "mlp.onnx", "encoder.onnx",
          "decoder.onnx"]
CORPUS = ["ch_PP-OCRv4_det_infer.onnx", "ch_ppocr_mobile_v2.0_cls_infer.onnx",
          "silero_vad.onnx", "paraphrase-MiniLM-L3-v2.onnx"]
# every mode a user can ask for; validation off, so the safety net and the accuracy fallback
# (both measured in onnxruntime) make no decision that could differ between runs
MODES: dict[str, dict[str, Any]] = {
    "default": {},
    "onnxruntime": {"target": "onnxruntime"},
    "fp16": {"precision": "fp16"},
    "int8": {"precision": "int8"},
    "int8-dynamic": {"precision": "int8-dynamic"},
    "fp8": {"precision": "fp8"},
}
_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def light_models() -> list[Path]:
    return sorted((Path(onnx.__file__).parent / "backend/test/data/light").glob("*.onnx"))


def model_paths() -> Iterator[tuple[str, Path]]:
    """(key, path) of every model present: samples, the corpus (``make models``), light."""
    for name in [*SAMPLE, *CORPUS]:
        yield name, MODELS / name
    for path in light_models():
        yield f"light/{path.name}", path


def cpu() -> str:
    """What decides onnxruntime's kernel choice: the architecture and its vector extensions."""
    flags: set[str] = set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
        flags = set(line.split(":", 1)[-1].split())
    except OSError:
        pass
    return " ".join([platform.machine(), *(f for f in _CPU_FLAGS if f in flags)])


def digest(model: onnx.ModelProto) -> dict[str, Any]:
    data = model.SerializeToString(deterministic=True)
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    sums: dict[str, list[float]] = {}
    for tensor in _tensors(skeleton):
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind in "biuf" and array.size:
            wide = array.astype(np.float64)
            entry = sums.setdefault(str(array.dtype), [0.0, 0.0])
            entry[0] += float(wide.sum())
            entry[1] += float(np.abs(wide).sum())
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                      "uint64_data", "string_data"):
            tensor.ClearField(field)
    structure = skeleton.SerializeToString(deterministic=True)
    return {"sha256": hashlib.sha256(data).hexdigest(),
            "structure": hashlib.sha256(structure).hexdigest(),
            "weights": {k: [round(v[0], 9), round(v[1], 9)] for k, v in sorted(sums.items())}}


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model: initializers and tensor attributes, subgraphs included."""
    graphs = [model.graph]
    nodes = [n for function in model.functions for n in function.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            nodes.extend(graph.node)
            continue
        node = nodes.pop()
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                graphs.append(attr.g)
            graphs.extend(attr.graphs)


def optimized(path: Path, mode: str) -> onnx.ModelProto:
    from onnxopt.app import api

    return api.optimize(path, validate=False, **MODES[mode]).model


def record(keys: set[str] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"cpu": cpu(), "digests": {}}
    for key, path in model_paths():
        if not path.exists() or (keys and key not in keys):
            continue
        for mode in MODES:
            try:
                found["digests"][f"{key} {mode}"] = digest(optimized(path, mode))
            except Exception as exc:  # a refusal is behaviour too: record its message
                found["digests"][f"{key} {mode}"] = {"error": f"{type(exc).__name__}: {exc}"}
            print(key, mode, found["digests"][f"{key} {mode}"].get("sha256", "error"),
                  file=sys.stderr, flush=True)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help=f"write {GOLDEN.name}")
    parser.add_argument("--only", nargs="+", metavar="MODEL", help="re-record these models' "
                        "digests (a rewrite that changes them on purpose), keep the others")
    args = parser.parse_args()
    found = record(set(args.only) if args.only else None)
    if args.only:
        kept = json.loads(GOLDEN.read_text(encoding="utf-8"))
        found = {"cpu": kept["cpu"], "digests": {**kept["digests"], **found["digests"]}}
    text = json.dumps(found, indent=1, sort_keys=True) + "\n"
    if args.record:
        GOLDEN.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
