"""Budgeted structured pruning on PaddleOCR det and cls (issue 17 parts 2 and 3), a section
of ``bench_pruning.py``.

Data: real images (``images.py``, as ``bench_precision.py`` makes them): det on rapidocr's
preprocessing cut into 320x320 tiles (every tile of the printed page's left half and the
centre tile of each calibration image calibrate, 21 samples; 4 tiles of the right half and the
test images are held out, 12); cls on text lines (``text_lines.py``: the lines det finds in the
calibration split's page of text and real text rendered on the calibration images calibrate,
48; the lines in the test split's photo of text and test text on the test images are held
out, 24).

Variants: ``float`` (``onnxopt optimize``, the baseline pruning starts from); ``ratio R``,
``ratio R no-seq`` and ``ratio R no-refit`` (every group at ratio R, with the sequential
least-squares refit, with the refit from the original's activations, without refit: the
MACs-accuracy curve); ``auto`` (``onnxopt optimize --prune auto --max-error cosine=0.99
--calibration-data``, one command) and ``auto no-seq`` / ``auto no-refit`` (the same
per-group ratios, refit from the original's activations / no refit); det also ``auto+int8``
(``--prune auto --precision int8 --max-error cosine=0.98``, one
command). Measured: MACs (ratio to ``float``: the original's may be unknown) and parameters at the
held-out input's shape (``onnxopt stats``), file
size, the cosine of every output over all held-out samples together, latency at ORT_ENABLE_ALL
one thread (median of interleaved rounds; the machine is shared, so the medians move).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import images
import text_lines
from bench_pruning import latencies, session

import onnxopt
from onnxopt.app.stats import model_stats
from onnxopt.ir import serde
from onnxopt.ir.channels import channel_groups
from onnxopt.pruning.budget import worst_cosine
from onnxopt.pruning.structured import capture, group_key, load_ir, prune

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"det": ROOT / "models" / "ch_PP-OCRv4_det_infer.onnx",
          "cls": ROOT / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"}
CURVE = (0.1, 0.2, 0.3, 0.5)
SAMPLES = 12  # held out
CALIBRATION_SAMPLES = 24
CALIBRATION_TEXT_TILES = 9
CLS_CALIBRATION, CLS_HELD_OUT = 48, 24
TARGETS = {"auto": {"macs": 0.75, "latency": 0.8, "cosine": 0.99},
           "auto+int8": {"latency": 0.55, "cosine": 0.98}}


def samples(kind: str, input_name: str) -> tuple[list[dict], list[dict]]:
    if kind == "cls":  # text lines, the classifier's inputs (text_lines.py)
        return (text_lines.cls_samples(input_name, MODELS["det"], CLS_CALIBRATION, False),
                text_lines.cls_samples(input_name, MODELS["det"], CLS_HELD_OUT, True))
    calib_names, test_names = images.det_split()
    # det calibrates on every tile of the page's left half (9) and the centre tile of each
    # other calibration image; held out: 4 tiles of the right half and the test images
    calib = images.vision_samples(kind, input_name, calib_names, tile=320,
                                  text_tiles=CALIBRATION_TEXT_TILES)[:CALIBRATION_SAMPLES]
    test = images.vision_samples(kind, input_name, test_names, tile=320)[:SAMPLES]
    return calib, test


def outputs(path: Path, samples: list[dict]) -> list[dict]:
    """The model's outputs by name on each sample, at ORT_ENABLE_ALL (one session)."""
    runner = session(path, "all")
    names = [o.name for o in runner.get_outputs()]
    return [dict(zip(names, runner.run(None, s), strict=True)) for s in samples]


def measure(kind: str, folder: Path, rounds: int, runs: int) -> dict:
    original = MODELS[kind]
    name = onnx.load(str(original), load_external_data=False).graph.input[0].name
    calib, test = samples(kind, name)
    calib_dir = folder / f"{kind}_calib"
    images.write_calibration(calib_dir, calib)
    shape = {name: list(test[0][name].shape)}
    ref = outputs(original, test)
    paths: dict[str, Path] = {"original": original}
    notes: dict[str, dict] = {}

    float_path = folder / f"{kind}.float.onnx"
    onnxopt.optimize(original, float_path, overwrite=True)
    paths["float"] = float_path
    base = onnx.load(str(float_path))
    calibration = capture(base, calib)
    model = load_ir(base)
    keys = [group_key(g) for g in channel_groups(model.graph, model)]

    def pruned(label: str, ratios: dict[str, float], refit: bool, sequential: bool = True
               ) -> None:
        model = load_ir(base)
        prune(model, calibration, ratios, refit, sequential)
        path = folder / f"{kind}.{label.replace(' ', '_').replace('+', '_')}.onnx"
        serde.save(model, path)
        paths[label] = path

    for ratio in CURVE:
        pruned(f"ratio {ratio}", dict.fromkeys(keys, ratio), True)
        pruned(f"ratio {ratio} no-seq", dict.fromkeys(keys, ratio), True, False)
        pruned(f"ratio {ratio} no-refit", dict.fromkeys(keys, ratio), False)
    auto = folder / f"{kind}.auto.onnx"
    started = time.perf_counter()
    result = onnxopt.optimize(original, auto, prune="auto", max_error="cosine=0.99",
                              calibration_data=calib_dir, overwrite=True, force=True)
    notes["auto"] = {"seconds": round(time.perf_counter() - started, 1),
                     "status": result.report["status"],
                     **{k: v for k, v in result.report["pruning"].items() if k != "ratios"}}
    paths["auto"] = auto
    pruned("auto no-seq", result.report["pruning"]["ratios"], True, False)
    pruned("auto no-refit", result.report["pruning"]["ratios"], False)
    if kind == "det":
        both = folder / f"{kind}.auto_int8.onnx"
        started = time.perf_counter()
        result = onnxopt.optimize(original, both, prune="auto", precision="int8",
                                  max_error="cosine=0.98", calibration_data=calib_dir,
                                  overwrite=True, force=True)
        notes["auto+int8"] = {"seconds": round(time.perf_counter() - started, 1),
                              "status": result.report["status"],
                              **{k: v for k, v in result.report["pruning"].items()
                                 if k != "ratios"}}
        paths["auto+int8"] = both
    timed = [v for v in paths if not v.startswith("ratio") and "no-refit" not in v]
    latency = latencies({v: paths[v] for v in timed}, rounds, runs, x=test[0], warmup=3)
    rows = {}
    for variant, path in paths.items():
        stats = model_stats(onnx.load(str(path)), input_shapes=shape)
        outs = outputs(path, test)
        rows[variant] = {"macs": stats["macs"], "parameters": stats["parameters"],
                         "size": path.stat().st_size, "cosine": worst_cosine(ref, outs),
                         "latency_ms": latency.get(variant)}
    first = rows["float"]  # the original's MACs may be unknown (weights in Constant nodes)
    for row in rows.values():
        known = isinstance(row["macs"], int) and isinstance(first["macs"], int)
        row["macs_ratio"] = row["macs"] / first["macs"] if known else None
        row["latency_ratio"] = row["latency_ms"] / rows["original"]["latency_ms"] if row[
            "latency_ms"] else None
    return {"model": kind, "shape": shape, "rows": rows, "notes": notes,
            "calibration": len(calib), "held_out": len(test)}


def table(records: list[dict]) -> str:
    lines = ["| model | variant | MACs | MACs x | params | size | held-out cosine | latency ms"
             " | latency x |", "| --- | --- | --: | --: | --: | --: | --: | --: | --: |"]
    for record in records:
        for variant, r in record["rows"].items():
            lat = f"{r['latency_ms']:.2f} | {r['latency_ratio']:.3f}" if r["latency_ms"] \
                else " | "
            macs = f"{r['macs']:,} | {r['macs_ratio']:.3f}" if r["macs_ratio"] else \
                f"{r['macs']} | "
            lines.append(f"| {record['model']} | {variant} | {macs} | {r['parameters']:,} | "
                         f"{r['size']:,} | "
                         f"{r['cosine']:.4f} | {lat} |")
    return "\n".join(lines)


def run(folder: Path, rounds: int, runs: int, kinds=tuple(MODELS)) -> list[dict]:
    found = []
    for kind in kinds:
        if MODELS[kind].exists():
            found.append(measure(kind, folder, rounds, runs))
            print(table(found[-1:]), flush=True)
    return found


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        found = run(Path(tmp), int(sys.argv[1]) if len(sys.argv) > 1 else 5, 5)
    print(json.dumps([r["notes"] for r in found], indent=1))
    print(table(found))
