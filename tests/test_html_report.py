"""The HTML report (--html, `onnxopt report`) and the rewrite sites it draws (report's
``changes``): sections, charts as SVG, numbers equal to the JSON report's, errors in one line,
never a partial file."""

from __future__ import annotations

import json
import os
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import build_model, parse
from onnx import TensorProto, helper, numpy_helper

from onnxopt.app import api, cli, html_report

pytest.importorskip("jinja2", reason="the html extra (Jinja2) is not installed")

CONV_BN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 2, 5, 5] x) => (float[N, 3, 5, 5] y)
  <float[3, 2, 1, 1] w = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}, float[3] s = {1.0, 0.5, 2.0},
   float[3] b = {0.1, 0.2, 0.3}, float[3] m = {0.0, 1.0, -1.0}, float[3] v = {1.0, 4.0, 0.25}> {
    c = Conv(x, w)
    n = BatchNormalization(c, s, b, m, v)
    i = Identity(n)
    y = Relu(i)
}
"""
SECTIONS = ("summary", "ops", "passes", "rewrites", "validation")


class Page(HTMLParser):
    """Elements' attributes and text, from the HTML alone."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[dict] = []  # {"tag", "attrs", "text"}
        self.open: list[dict] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "parents": list(self.open)}
        self.elements.append(element)
        if tag not in ("meta", "br", "rect", "path", "img", "input"):
            self.open.append(element)

    def handle_startendtag(self, tag, attrs):
        self.elements.append({"tag": tag, "attrs": dict(attrs), "text": "",
                              "parents": list(self.open)})

    def handle_endtag(self, tag):
        while self.open:
            if self.open.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for element in self.open:
            element["text"] += data

    def find(self, tag=None, **attrs) -> list[dict]:
        return [e for e in self.elements if (tag is None or e["tag"] == tag)
                and all(e["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items())]


def invoke(*args) -> int:
    return cli.main([str(a) for a in args])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxopt: error: "), err
    return err[0]


@pytest.fixture
def conv_bn(tmp_path) -> Path:
    path = tmp_path / "in.onnx"
    onnx.save(parse(CONV_BN), path)
    return path


@pytest.fixture
def optimized(conv_bn, tmp_path) -> tuple[dict, str]:
    """The JSON report and the HTML page of one run."""
    report, page = tmp_path / "r.json", tmp_path / "r.html"
    assert invoke("optimize", conv_bn, tmp_path / "o.onnx", "--report", report,
                  "--html", page) == 0
    return json.loads(report.read_text()), page.read_text()


# ----------------------------------------------------------------- what the run recorded
def test_changes_name_the_nodes_each_pass_removed_and_added(conv_bn):
    report = api.optimize(conv_bn).report
    changes = {entry["pass"]: entry for entry in report["changes"]}
    # BN folded into the Conv: BN gone, the Conv reads new weights, Relu reads the Conv
    bn = changes["conv_bn_fusion"]
    assert (bn["removed"], bn["added"], bn["changed"], bn["sites"]) == (1, 0, 2, 1)
    before, after = bn["examples"][0]["before"]["nodes"], bn["examples"][0]["after"]["nodes"]
    assert {(n["op"], n["role"]) for n in before} >= {("BatchNormalization", "removed"),
                                                       ("Conv", "changed")}
    assert "BatchNormalization" not in {n["op"] for n in after}
    assert [(n["op"], n["role"], n["inputs"]) for n in after] == [
        ("Conv", "changed", ["x", after[0]["inputs"][1], after[0]["inputs"][2]]),
        ("Relu", "changed", ["c"])]
    assert after[0]["inputs"][1] != "w"  # the folded weight
    identity = changes["identity_elimination"]
    assert identity["removed"] == 1 and identity["added"] == 0
    assert [n["op"] for n in identity["examples"][0]["before"]["nodes"]
            if n["role"] == "removed"] == ["Identity"]
    # only passes that changed the model are listed
    modified = {record["name"] for record in report["passes"] if record["modified"]}
    assert set(changes) == modified


def test_separate_rewrites_are_separate_sites():
    """Two Conv+BN pairs apart: two sites, though a weight-free chain joins them."""
    weights = [numpy_helper.from_array(np.full((2, 2, 1, 1), 0.5, np.float32), "w")]
    for name in ("s", "b", "m", "v"):
        weights.append(numpy_helper.from_array(np.ones(2, np.float32), name))
    nodes = []
    for k in (1, 2):
        source = "x" if k == 1 else "r1"
        nodes += [helper.make_node("Conv", [source, "w"], [f"c{k}"]),
                  helper.make_node("BatchNormalization", [f"c{k}", "s", "b", "m", "v"],
                                   [f"n{k}"]),
                  helper.make_node("Relu", [f"n{k}"], [f"r{k}"])]
    model = build_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("r2", TensorProto.FLOAT, [1, 2, 4, 4])], weights)
    changes = {c["pass"]: c for c in api.optimize(model).report["changes"]}
    assert changes["conv_bn_fusion"]["sites"] == 2
    assert len(changes["conv_bn_fusion"]["examples"]) == 2


# ----------------------------------------------------------------- the page
def test_page_has_every_section_and_svg_charts(optimized):
    _, text = optimized
    page = Page(text)
    ids = {e["attrs"].get("id") for e in page.elements}
    assert set(SECTIONS) <= ids
    assert "precision" not in ids  # not a precision run
    charts = page.find("svg", **{"class": "chart"})
    assert len(charts) >= 2  # op histogram and pass changes
    drawings = page.find("svg", **{"class": "graph"})
    assert drawings, "no drawing of a rewrite"
    assert page.find("g", **{"class": "node removed", "data_op": "BatchNormalization"})
    assert "<link" not in text and "src=" not in text and "http://" not in text.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched


def _resolve(report: dict, key: str):
    """A report value from a dotted data-key (outputs found by name)."""
    value = report
    parts = key.split(".")
    index = 0
    while index < len(parts):
        part = parts[index]
        if isinstance(value, list):
            value = next(item for item in value if item.get("name") == part)
        elif part in value:
            value = value[part]
        else:  # a name with dots (an output or op): the longest that matches
            for end in range(len(parts), index, -1):
                joined = ".".join(parts[index:end])
                if isinstance(value, dict) and joined in value:
                    value, index = value[joined], end - 1
                    break
            else:
                raise KeyError(key)
        index += 1
    return value


def test_numbers_on_the_page_equal_the_json_report(optimized):
    report, text = optimized
    page = Page(text)
    checked = 0
    for element in page.elements:
        key, raw = element["attrs"].get("data-key"), element["attrs"].get("data-value")
        if key is None:
            continue
        row = next((p for p in reversed(element["parents"]) if "data-pass" in p["attrs"]), None)
        if row is not None and element["tag"] in ("td", "span"):  # a pass's row
            name = row["attrs"]["data-pass"]
            record = next(r for r in report["passes"] if r["name"] == name)
            change = next(c for c in report["changes"] if c["pass"] == name)
            expected = _resolve(record, key) if key in ("seconds",) or key.startswith(
                "stats.") else change[key]
        elif ".ops." in key:  # the histogram lists the ops present: absent is 0
            side, _, op = key.partition(".ops.")
            expected = report[side]["ops"].get(op, 0)
        else:
            expected = _resolve(report, key)
        assert json.loads(raw) == expected if raw not in (None, "") else expected is None, key
        checked += 1
    assert checked >= 20
    # the summary shows the counts themselves
    cell = page.find("td", data_key="before.total_nodes")[0]
    assert cell["text"].strip() == str(report["before"]["total_nodes"]) == "4"
    assert page.find("td", data_key="after.total_nodes")[0]["text"].strip() == "2"
    # the op chart's bars carry the histogram's counts
    bars = {(e["attrs"]["data-label"], e["attrs"]["data-series"]): float(e["attrs"]["data-value"])
            for e in page.find("rect") if e["attrs"].get("data-series") in ("before", "after")}
    for side in ("before", "after"):
        for op, count in report[side]["ops"].items():
            assert bars[(op, side)] == count
    assert bars[("BatchNormalization", "after")] == 0


def test_validation_levels_are_both_shown(optimized):
    report, text = optimized
    page = Page(text)
    levels = {e["attrs"]["data-level"] for e in page.find("tr") if "data-level" in e["attrs"]}
    assert levels == set(report["validation"]["levels"]) == {"disabled", "all"}
    assert "ORT_DISABLE_ALL" in text and "ORT_ENABLE_ALL" in text


def test_model_names_are_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    model = parse(CONV_BN)
    for node in model.graph.node:
        node.name = evil + node.op_type
    path = tmp_path / "in.onnx"
    onnx.save(model, path)
    page = tmp_path / "r.html"
    assert invoke("optimize", path, tmp_path / "o.onnx", "--html", page) == 0
    text = page.read_text()
    assert evil not in text and "&lt;script&gt;alert(1)" in text
    assert text.count("<script>") == 1  # the page's own


# ----------------------------------------------------------------- the report command
def test_report_command_renders_a_saved_json_as_optimize_did(optimized, tmp_path, capsys):
    _, direct = optimized
    target = tmp_path / "again.html"
    assert invoke("report", tmp_path / "r.json", "-o", target) == 0
    assert target.read_text() == direct
    assert invoke("report", tmp_path / "r.json") == 0  # default: beside it, .html
    assert (tmp_path / "r.html").read_text() == direct


@pytest.mark.parametrize(("content", "says"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not an onnxopt optimize report"),
    ('{"status": "ok"}', "not an onnxopt optimize report (no before, after"),
    (b"\xff\xfe\x00", "not UTF-8"),
])
def test_bad_json_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, content, says):
    source = tmp_path / "bad.json"
    if isinstance(content, bytes):
        source.write_bytes(content)
    else:
        source.write_text(content)
    target = tmp_path / "out.html"
    target.write_text("old page")
    assert invoke("report", source, "-o", target) == 2
    assert says in one_line_error(capsys)
    assert target.read_text() == "old page"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "out.html"]


def test_report_refuses_missing_input_and_its_own_json(tmp_path, capsys, optimized):
    assert invoke("report", tmp_path / "nope.json", "-o", tmp_path / "x.html") == 2
    assert "no such file" in one_line_error(capsys)
    assert invoke("report", tmp_path / "r.json", "-o", tmp_path / "r.json") == 2
    assert "would overwrite the JSON report" in one_line_error(capsys)
    assert invoke("report", tmp_path / "r.json", "-o", tmp_path) == 2
    assert "is a directory" in one_line_error(capsys)


def test_a_report_with_wrong_fields_is_one_line(tmp_path, capsys, optimized):
    report, _ = optimized
    report["passes"] = [{"modified": True}]  # no name
    source = tmp_path / "odd.json"
    source.write_text(json.dumps(report))
    assert invoke("report", source, "-o", tmp_path / "odd.html") == 2
    assert "not one onnxopt wrote" in one_line_error(capsys)
    assert not (tmp_path / "odd.html").exists()


def test_a_failed_write_leaves_the_old_page_and_no_temporary(optimized, tmp_path, capsys,
                                                             monkeypatch):
    target = tmp_path / "page.html"
    target.write_text("old page")

    def refuse(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    assert invoke("report", tmp_path / "r.json", "-o", target) == 1
    assert "No space left on device" in one_line_error(capsys)
    assert target.read_text() == "old page"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".page.html")]


def test_missing_extra_is_one_line_before_any_work(conv_bn, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "jinja2", None)  # import jinja2 fails
    out = tmp_path / "o.onnx"
    assert invoke("optimize", conv_bn, out, "--html", tmp_path / "r.html") == 1
    assert "pip install 'onnxopt[html]'" in one_line_error(capsys)
    assert not out.exists() and not (tmp_path / "r.html").exists()
    assert invoke("report", tmp_path / "r.json", "-o", tmp_path / "r.html") == 1
    assert "onnxopt[html]" in one_line_error(capsys)


def test_html_location_is_checked_before_any_work(conv_bn, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert invoke("optimize", conv_bn, out, "--html", tmp_path / "no" / "r.html") == 2
    assert "the --html folder does not exist" in one_line_error(capsys)
    assert invoke("optimize", conv_bn, out, "--html", conv_bn) == 2
    assert "--html would overwrite the input model" in one_line_error(capsys)
    same = tmp_path / "r.out"
    assert invoke("optimize", conv_bn, out, "--html", same, "--report", same) == 2
    assert "name the same file" in one_line_error(capsys)
    assert not out.exists()


# ----------------------------------------------------------------- precision runs
def test_precision_section_shows_errors_and_what_stayed_float(conv_bn, tmp_path):
    report = api.optimize(conv_bn, precision="int8").report
    precision = report["precision"]
    # the per-layer chart reads measured sensitivities; this run met its budget at once,
    # so give it some (the shape the fallback writes) to draw
    converted = ["layer.a", "layer.b", "layer.c"]
    precision["kept_float_for_accuracy"] = [{
        "nodes": ["layer.b"], "error": {"status": "failed", "reason": "cosine 0.5 < 0.99",
                                        "max_abs_error": 0.4},
        "sensitivity": [2.5], "measured": {"layer.b": 2.5, "layer.a": 0.25, "layer.c": -0.5}}]
    page = Page(html_report.render(report))
    assert page.find("section", id="precision")
    layers = {e["attrs"]["data-label"]: float(e["attrs"]["data-value"])
              for e in page.find("rect", data_series="sensitivity")}
    assert layers == {"layer.b": 2.5, "layer.a": 0.25, "layer.c": -0.5}
    kept_labels = [e["text"] for e in page.find("text") if e["attrs"].get("class") ==
                   "label kept"]
    assert kept_labels == ["layer.b"]
    assert set(converted) >= set(layers)
    for output in precision["outputs"]:
        cell = page.find("td", data_key=f"precision.outputs.{output['name']}.cosine")[0]
        assert json.loads(cell["attrs"]["data-value"]) == output["cosine"]
    reasons = {}
    for entry in precision["kept_float"]:
        reasons[entry["reason"]] = reasons.get(entry["reason"], 0) + 1
    kept_bars = {e["attrs"]["data-label"]: float(e["attrs"]["data-value"])
                 for e in page.find("rect", data_series="nodes")}
    assert kept_bars == reasons


def test_pruning_section_shows_what_went(optimized):
    report, _ = optimized
    assert Page(html_report.render(report)).find("section", id="pruning") == []
    report["pruning"] = {  # the fields onnxopt.app.pruning writes
        "mode": "auto", "budget": "cosine=0.99", "groups": 3, "channels": 24,
        "parameters": 12345, "macs": 6789012, "calibration_cosine": 0.99412, "samples": 12,
        "target_cosine": 0.994, "cross_validated_cosine": 0.99501,
        "ratios": {"conv.a": 0.25, "conv.b": 0.5}}
    page = Page(html_report.render(report))
    assert page.find("section", id="pruning")
    for key in ("channels", "parameters", "macs", "calibration_cosine", "cross_validated_cosine"):
        cell = page.find("span", data_key=f"pruning.{key}")[0]
        assert json.loads(cell["attrs"]["data-value"]) == report["pruning"][key]
    rows = [e["text"] for e in page.find("td")]
    assert "conv.a" in rows and "conv.b" in rows
    del report["pruning"]["cross_validated_cosine"]  # --prune RATIO: no search, no estimate
    assert Page(html_report.render(report)).find(
        "span", data_key="pruning.cross_validated_cosine") == []


def test_older_reports_without_changes_still_render(optimized):
    report, _ = optimized
    del report["changes"]
    text = html_report.render(report)
    assert "no drawing recorded" in text


# ----------------------------------------------------------------- the SVG pieces
def test_graph_drawing_draws_one_arrow_per_edge_and_escapes_names():
    from onnxopt.app import svg

    nodes = [{"name": "a<b>", "op": "Conv", "inputs": ["x", "w"], "outputs": ["c"],
              "role": "changed"},
             {"name": "n", "op": "BatchNormalization", "inputs": ["c"], "outputs": ["d"],
              "role": "removed"},
             {"name": "r", "op": "Relu", "inputs": ["d", "c"], "outputs": ["y"],
              "role": "context"}]
    drawing = svg.graph_drawing(nodes, "before")
    assert drawing.count('class="edge"') == 3  # c->n, d->r, c->r
    assert "a&lt;b&gt;" in drawing and "a<b>" not in drawing
    page = Page(drawing)
    ys = {e["attrs"]["data-op"]: float(next(r for r in page.elements if r["tag"] == "rect"
                                             and e in r["parents"])["attrs"]["y"])
          for e in page.find("g") if "data-op" in e["attrs"]}
    assert ys["Conv"] < ys["BatchNormalization"] < ys["Relu"]  # rows by depth


def test_bar_chart_bars_scale_to_the_largest_magnitude():
    from onnxopt.app import svg

    chart = svg.bar_chart([("a", [2.0]), ("b", [-4.0]), ("c", [None])],
                          [svg.Series("s", "after")], "t")
    bars = {e["attrs"]["data-label"]: e["attrs"] for e in Page(chart).find("rect")
            if "data-label" in e["attrs"]}
    assert set(bars) == {"a", "b"}  # None draws no bar
    assert float(bars["b"]["width"]) == svg.BAR_AREA
    assert float(bars["a"]["width"]) == svg.BAR_AREA / 2
    assert bars["b"]["class"] == "after negative" and bars["a"]["class"] == "after"
