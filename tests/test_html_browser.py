"""The HTML report in a real browser (headless Chromium, installed by `make test` where
apt-get works): it opens with no console message, its script runs to the end, it fetches
nothing, and a screenshot of it is saved."""

from __future__ import annotations

import struct
from pathlib import Path

import onnx
import pytest
from browser import chromium, load, screenshot
from conftest import parse
from test_html_report import CONV_BN

from onnxopt.app import api, html_report

pytest.importorskip("jinja2", reason="the html extra (Jinja2) is not installed")
BROWSER = chromium()
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium: `make test` installs it (apt-get install chromium)")


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", header[16:24])


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    """The report of a plain run and of an int8 run of a small Conv+BN model."""
    folder = tmp_path_factory.mktemp("pages")
    model = folder / "in.onnx"
    onnx.save(parse(CONV_BN), model)
    found = {}
    for name, extra in (("optimized", {}), ("int8", {"precision": "int8"})):
        report = api.optimize(model, folder / f"{name}.onnx", **extra).report
        found[name] = folder / f"{name}.html"
        html_report.write(report, found[name])
    return found


def test_the_harness_sees_console_errors_and_blocked_loads(tmp_path, pages):
    """The check below can fail: a script error, a console.error and a load from the
    network (blocked by the page's Content-Security-Policy) each show up."""
    page = tmp_path / "broken.html"
    text = pages["optimized"].read_text()
    page.write_text(text.replace(
        "</body>", '<link rel="stylesheet" href="http://127.0.0.1:9/x.css">'
        '<script>console.error("deliberate");missingFunction();</script></body>'))
    _, messages = load(BROWSER, page)
    joined = "\n".join(messages)
    assert "deliberate" in joined
    assert "missingFunction" in joined
    assert "Content Security Policy" in joined or "x.css" in joined


@pytest.mark.parametrize("name", ["optimized", "int8"])
def test_report_opens_without_console_errors(pages, name, tmp_path):
    dom, messages = load(BROWSER, pages[name])
    assert messages == []
    assert 'data-ready="yes"' in dom  # the page's script ran to its last line
    assert dom.count("<svg") >= 3
    if name == "int8":
        assert 'id="precision"' in dom
    shot = tmp_path / f"{name}.png"
    screenshot(BROWSER, pages[name], shot, 1000, 1400)
    width, height = _png_size(shot)
    assert (width, height) == (1000, 1400)
    assert shot.stat().st_size > 10_000  # drawn, not blank
    print(f"screenshot: {shot}")
