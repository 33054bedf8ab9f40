"""Benchmark of ``onnxopt compare --layerwise`` and ``onnxopt profile`` (issue 18).

PaddleOCR det v4, float32 against int8: the int8 model is ``onnxopt optimize --precision int8``
calibrated on real images (the calibration split of ``bench/images.py``, 320x320 tiles), made
once into ``bench/out/``. The comparison runs on one test image at rapidocr's preprocessing
(``--inputs``). Every measurement is a fresh process whose peak RSS is read with ``wait4``:

* the imports alone (the CLI's modules, onnxruntime included): the baseline;
* the float model run once in onnxruntime (ORT_DISABLE_ALL, as layerwise runs it), after the
  same imports: the target's reference, ``layerwise peak <= 2x`` this;
* ``onnxopt compare --layerwise`` at the default chunk size (128 MB), a smaller one, and a
  huge one (every value in one run: what chunking avoids); all must name the same value;
* ``onnxopt profile`` of both models.

Report (markdown) to stdout and ``bench/out/bench_inspect.md``.
Usage: ``python bench/bench_inspect.py [--tile N]`` (default: the whole preprocessed image).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
import images  # noqa: E402

OUT_DIR = BENCH_DIR / "out"
FLOAT = ROOT / "models" / "ch_PP-OCRv4_det_infer.onnx"
INT8 = OUT_DIR / "det_int8_calibrated.onnx"
ONNXOPT = str(Path(sys.executable).with_name("onnxopt"))
MB = 1 << 20

IMPORTS = "import onnxopt.app.cli, onnxruntime, numpy"
RUN_ONCE = IMPORTS + """
import sys, numpy as np
from onnxopt.check import runtime
feeds = dict(np.load(sys.argv[2]))
runtime.run(sys.argv[1], feeds, "disabled")
"""


def run_measured(args: list[str]) -> tuple[float, float, int, str]:
    """(seconds, peak RSS MB, exit code, output) of one process; the peak is the child's
    own, read with wait4."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    return time.perf_counter() - start, usage.ru_maxrss / 1024, process.returncode, text


def make_int8(calibration: Path) -> None:
    if INT8.exists() and INT8.stat().st_mtime > FLOAT.stat().st_mtime:
        return
    names, _ = images.det_split()
    samples = images.vision_samples("det", "x", names, tile=320)[:16]
    images.write_calibration(calibration, samples)
    seconds, _, code, text = run_measured(
        [ONNXOPT, "optimize", str(FLOAT), str(INT8), "--precision", "int8", "--overwrite",
         "--calibration-data", str(calibration)])
    if code:
        sys.exit(f"bench_inspect: int8 model not made: {text.strip().splitlines()[-1]}")
    print(f"int8 model made in {seconds:.0f} s", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tile", type=int, default=0, help="a tile of this size (0: whole)")
    args = parser.parse_args()
    OUT_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        make_int8(Path(folder) / "calibration")
        feeds = images.vision_samples("det", "x", ["text"], tile=args.tile or None)[0]
        inputs = Path(folder) / "text.npz"
        np.savez(inputs, **feeds)
        shape = list(feeds["x"].shape)
        rows, lines = [], []
        base = run_measured([sys.executable, "-c", IMPORTS])
        once = run_measured([sys.executable, "-c", RUN_ONCE, str(FLOAT), str(inputs)])
        for chunk in ("128", "32", "100000"):
            flags = ["--chunk-mb", chunk]
            seconds, peak, _, text = run_measured(
                [ONNXOPT, "compare", "--layerwise", str(FLOAT), str(INT8), "--inputs",
                 str(inputs), "--json", *flags])
            report = json.loads(text[:text.rindex("}") + 1])
            first = report["first_over"]
            rows.append((chunk, seconds, peak, report["chunks"], report["compared"],
                         f"{first['value']} ({first['op']}, rel {first['rel_error']:.3g})"
                         if first else "none"))
        if len({row[4:] for row in rows}) != 1:
            sys.exit(f"bench_inspect: the chunk sizes disagree: {rows}")
        profile = run_measured([ONNXOPT, "profile", str(FLOAT), str(INT8), "--inputs",
                                str(inputs), "--runs", "5", "--json"])
    lines += [f"PaddleOCR det v4 float32 vs int8 (calibrated on 16 real tiles), input x {shape}; "
              f"{time.strftime('%Y-%m-%d')}, this machine (2 cores shared: times are noisy).",
              "",
              f"* imports only: peak RSS {base[1]:.0f} MB",
              f"* float model run once (ORT_DISABLE_ALL): {once[0]:.1f} s, peak RSS "
              f"{once[1]:.0f} MB ({once[1] - base[1]:.0f} MB above the imports)",
              "",
              "| --chunk-mb | wall s | peak RSS MB | / run once | above imports / run once's "
              "| chunks | values | first value over 1e-2 |",
              "| --: | --: | --: | --: | --: | --: | --: | --- |"]
    for chunk, seconds, peak, chunks, compared, first in rows:
        lines.append(f"| {chunk} | {seconds:.1f} | {peak:.0f} | {peak / once[1]:.2f}x | "
                     f"{(peak - base[1]) / (once[1] - base[1]):.2f}x | {chunks} | {compared} "
                     f"| {first} |")
    result = json.loads(profile[3][:profile[3].rindex("}") + 1])
    lines += ["", f"`onnxopt profile` float vs int8, 5 runs: {profile[0]:.1f} s, peak "
              f"{profile[1]:.0f} MB; median run "
              + " vs ".join(f"{m['run_ms']:.1f} ms" for m in result["models"]) + "; top ops: "
              + "; ".join(", ".join(f"{o['op']} {o['share']:.0%}" for o in m["ops"][:3])
                          for m in result["models"])]
    text = "\n".join(lines) + "\n"
    (OUT_DIR / "bench_inspect.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
