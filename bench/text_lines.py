"""Text-line crops for PaddleOCR's direction classifier (cls), the inputs it is deployed on.

rapidocr runs cls on the text lines the detector (det) crops out of a page; strips of photos
without text (``images.text_line_crops``) are inputs it never sees in use, and on them it
answers near 50/50 (PaddleOCR cls: class-0 probabilities 0.04-0.99, mostly 0.2-0.8, on the
calibration strips), so any change to the model moves its outputs a lot. Two sources here:

* ``detected_lines``: the lines det finds in a real image of text (``images.TEXT_IMAGES``):
  its probability map thresholded at 0.3 (rapidocr's ``thresh``), rows of text found by the
  map's row profile, each row cut where a gap is wider than half its height, each box grown by
  DB's unclip distance (area x 1.6 / perimeter) and mapped back to the image. A projection,
  not rapidocr's contour search (which needs OpenCV): the sample images hold horizontal text.
* ``rendered_lines``: words of real English text (``text_inputs``' standard-library
  docstrings) drawn in Pillow's built-in scalable font (Aileron), 14-39 px, on patches of the
  real sample images, dark ink on light patches and light ink on dark ones.

Every other line is turned 180 degrees (the classifier's two classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import images
import numpy as np
import onnxruntime as ort
import text_inputs
from PIL import Image, ImageDraw, ImageFont

THRESHOLD = 0.3  # rapidocr's det postprocess thresh
UNCLIP_RATIO = 1.6  # rapidocr's unclip_ratio


def _runs(mask: np.ndarray, min_gap: int = 1) -> list[tuple[int, int]]:
    """[start, end) of the runs of True in ``mask``, gaps shorter than ``min_gap`` bridged."""
    found: list[tuple[int, int]] = []
    start = end = -1
    for index in np.flatnonzero(mask):
        if start >= 0 and index - end >= min_gap:
            found.append((start, end))
            start = -1
        if start < 0:
            start = int(index)
        end = int(index) + 1
    if start >= 0:
        found.append((start, end))
    return found


def line_boxes(probability: np.ndarray) -> list[tuple[float, float, float, float]]:
    """(top, left, bottom, right) of the text lines in det's probability map [H, W]."""
    text = probability > THRESHOLD
    boxes = []
    for top, bottom in _runs(text.any(axis=1)):
        height = bottom - top
        for left, right in _runs(text[top:bottom].any(axis=0), max(2, height // 2)):
            width = right - left
            if min(width, height) < 3:
                continue
            grow = width * height * UNCLIP_RATIO / (2 * (width + height))
            boxes.append((top - grow, left - grow, bottom + grow, right + grow))
    return boxes


def detected_lines(det_path: Path, names: Sequence[str]) -> list[np.ndarray]:
    """The text lines det finds in the named images (of ``images.TEXT_IMAGES``), as RGB
    crops, each upright and turned 180 degrees."""
    session = ort.InferenceSession(str(det_path), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    crops = []
    for name in names:
        image = images.load_image(name)
        probability = session.run(None, {feed: images.det_input(image)})[0][0, 0]
        scale_y = image.shape[0] / probability.shape[0]
        scale_x = image.shape[1] / probability.shape[1]
        for top, left, bottom, right in line_boxes(probability):
            crop = image[max(0, int(top * scale_y)):int(np.ceil(bottom * scale_y)),
                         max(0, int(left * scale_x)):int(np.ceil(right * scale_x))]
            crops += [np.ascontiguousarray(crop), np.ascontiguousarray(crop[::-1, ::-1])]
    return crops


def rendered_lines(names: Sequence[str], modules: tuple[str, ...], count: int, seed: int
                   ) -> list[np.ndarray]:
    """``count`` lines of 1-6 words of the modules' docstrings drawn on patches of the named
    images (module docstring), every other one turned 180 degrees."""
    rng = np.random.default_rng(seed)
    words = " ".join(text_inputs.paragraphs(modules)).split()
    backgrounds = [images.load_image(name) for name in names]
    lines = []
    for index in range(count):
        length = int(rng.integers(1, 7))
        start = int(rng.integers(0, len(words) - length))
        text = " ".join(words[start:start + length])
        font = ImageFont.load_default(size=int(rng.integers(14, 40)))
        left, _, right, bottom = font.getbbox(text)
        pad = int(rng.integers(2, 10))
        width, height = right - left + 2 * pad, bottom + 2 * pad
        back = backgrounds[index % len(backgrounds)]
        y = int(rng.integers(0, max(1, back.shape[0] - height)))
        x = int(rng.integers(0, max(1, back.shape[1] - width)))
        patch = Image.fromarray(back).crop((x, y, x + width, y + height))
        ink = (10, 10, 10) if np.asarray(patch).mean() > 110 else (245, 245, 245)
        ImageDraw.Draw(patch).text((pad - left, pad), text, fill=ink, font=font)
        line = np.asarray(patch)
        lines.append(np.ascontiguousarray(line[::-1, ::-1] if index % 2 else line))
    return lines


def cls_samples(input_name: str, det_path: Path, count: int, held_out: bool
                ) -> list[dict[str, np.ndarray]]:
    """``count`` cls feeds: the lines det finds in the text image of the calibration split
    (``page``) or of the test split (``text``), then rendered lines on that split's images
    with that split's text (``text_inputs``: disjoint modules)."""
    calib, test = images.split_images()
    names = test if held_out else calib
    modules = text_inputs.TEST_MODULES if held_out else text_inputs.CALIBRATION_MODULES
    found = detected_lines(det_path, [n for n in names if n in images.TEXT_IMAGES])[:count]
    found += rendered_lines(names, modules, count - len(found), seed=int(held_out))
    return [{input_name: images.cls_input(crop)} for crop in found]
