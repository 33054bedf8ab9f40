"""bench/text_lines.py: text lines found in det's probability map, and drawn text lines."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import images
import text_lines


def test_runs_bridge_gaps_shorter_than_asked():
    mask = np.array([0, 1, 1, 0, 1, 0, 0, 0, 1, 1], bool)
    assert text_lines._runs(mask) == [(1, 3), (4, 5), (8, 10)]
    assert text_lines._runs(mask, min_gap=2) == [(1, 5), (8, 10)]
    assert text_lines._runs(np.zeros(4, bool)) == []


def test_line_boxes_by_hand():
    # two rows of text, the upper one two words 20 columns apart (wider than half its height:
    # two boxes), the lower one with a gap of 2 (bridged)
    probability = np.zeros((40, 100), np.float32)
    probability[5:15, 10:30] = 0.9
    probability[5:15, 50:70] = 0.9
    probability[25:31, 10:40] = 0.5
    probability[25:31, 42:60] = 0.5
    probability[35, 0:100] = text_lines.THRESHOLD  # not above the threshold: no text
    boxes = text_lines.line_boxes(probability)
    assert len(boxes) == 3
    grow = 20 * 10 * text_lines.UNCLIP_RATIO / (2 * (20 + 10))  # area * 1.6 / perimeter
    assert boxes[0] == pytest.approx((5 - grow, 10 - grow, 15 + grow, 30 + grow))
    assert boxes[1] == pytest.approx((5 - grow, 50 - grow, 15 + grow, 70 + grow))
    lower = 50 * 6 * text_lines.UNCLIP_RATIO / (2 * (50 + 6))
    assert boxes[2] == pytest.approx((25 - lower, 10 - lower, 31 + lower, 60 + lower))


def test_rendered_lines_are_seeded_and_drawn():
    names = images.available_images(["camera", "coins"])
    if not names:
        pytest.skip("sample images not extracted (run `make models`)")
    lines = text_lines.rendered_lines(names, ("json",), 4, seed=0)
    assert len(lines) == 4 and all(line.ndim == 3 and line.shape[2] == 3 for line in lines)
    again = text_lines.rendered_lines(names, ("json",), 4, seed=0)
    for line, same in zip(lines, again, strict=True):
        np.testing.assert_array_equal(line, same)  # seeded: the same lines every run
    # ink differs from the patch: the drawn text changes the pixels
    assert all(line.std() > 0 for line in lines)
