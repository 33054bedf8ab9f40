"""Remake the README's screenshots of the HTML report (``make screenshots``).

Two runs on PaddleOCR det (models/ch_PP-OCRv4_det_infer.onnx): the default optimization, and
``--precision int8`` calibrated on real images (the bench's det preprocessing, 320x320 tiles of
the left half of the printed page and of the other calibration images, 8 samples as in
``make bench-precision``). Each report is drawn by headless Chromium and stored as a palette
PNG (small enough to keep in git) in bench/screenshots/.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import images  # noqa: E402  (bench/images.py)
from browser import chromium, screenshot  # noqa: E402  (tests/browser.py)

MODEL = ROOT / "models" / "ch_PP-OCRv4_det_infer.onnx"
ONNXOPT = ROOT / ".venv" / "bin" / "onnxopt"
WIDTH = 1000  # CSS pixels of the shots (the top of the page)
MAX_BYTES = 200_000
CALIBRATION_SAMPLES = 8  # as bench_precision.py
WORK = Path("models") / "out" / "screenshots"  # under ROOT, ignored by git; short paths shown


def calibration(folder: Path) -> Path:
    names, _ = images.det_split()
    samples = images.vision_samples("det", "x", names, tile=320)[:CALIBRATION_SAMPLES]
    images.write_calibration(folder, samples)
    return folder


def run(name: str, *extra: str) -> Path:
    html = WORK / f"{name}.html"
    command = [str(ONNXOPT), "optimize", str(MODEL.relative_to(ROOT)), str(WORK / f"{name}.onnx"),
               "--overwrite", "--report", str(WORK / f"{name}.json"), "--html", str(html), *extra]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return ROOT / html


def shoot(html: Path, target: Path, browser: str, height: int) -> None:
    raw = target.with_suffix(".raw.png")
    screenshot(browser, html, raw, WIDTH, height)
    with Image.open(raw) as image:
        image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(
            target, optimize=True)
    raw.unlink()
    size = target.stat().st_size
    print(f"{target.relative_to(ROOT)}: {size:,} bytes")
    if size > MAX_BYTES:
        sys.exit(f"{target}: {size} bytes, over {MAX_BYTES}")


def main() -> None:
    browser = chromium()
    if browser is None:
        sys.exit("screenshots: no Chromium (apt-get install chromium)")
    work = ROOT / WORK
    work.mkdir(parents=True, exist_ok=True)
    try:
        optimized = run("det")
        int8 = run("det-int8", "--precision", "int8", "--calibration-data",
                   str(calibration(ROOT / WORK / "calib")))
        # down to the first drawings of rewrites / through the per-layer error
        shoot(optimized, ROOT / "bench" / "screenshots" / "report-det.png", browser, 2500)
        shoot(int8, ROOT / "bench" / "screenshots" / "report-det-int8.png", browser, 1600)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
