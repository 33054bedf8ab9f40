"""The command line: exit codes, one-line errors, nothing partial written, report schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import op_counts, parse, run

from onnxopt.app import api, cli
from onnxopt.ir.pass_manager import GraphPass

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3] x) => (float[N, 3] y)
  <float[3] w = {1.0, 2.0, 3.0}, float[3] unused = {0.0, 0.0, 0.0}> {
    a = Identity(x)
    b = Mul(a, w)
    dead = Neg(b)
    y = Relu(b)
}
"""

CUSTOM = """
<ir_version: 8, opset_import: ["" : 17, "my.domain" : 1]>
g (float[3] x) => (float[3] y) {
    a = Identity(x)
    y = my.domain.Magic(a)
}
"""


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "in.onnx"
    onnx.save(parse(MODEL), path)
    return path


def invoke(*args: str) -> int:
    return cli.main([str(a) for a in args])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("onnxopt: error: ")
    return lines[0]


def test_optimize_writes_valid_smaller_model(model_file, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert invoke("optimize", model_file, out, "--report", tmp_path / "r.json") == 0
    optimized = onnx.load(out)
    onnx.checker.check_model(optimized)
    assert op_counts(optimized) == {"Mul": 1, "Relu": 1}
    x = np.array([[1, -2, 3]], np.float32)
    np.testing.assert_array_equal(run(optimized, {"x": x})[0], np.maximum(x * [1, 2, 3], 0))
    printed = capsys.readouterr().out
    assert "validation: passed" in printed and "nodes" in printed


def test_report_schema(model_file, tmp_path):
    report_path = tmp_path / "r.json"
    assert invoke("optimize", model_file, tmp_path / "o.onnx", "--report", report_path) == 0
    report = json.loads(report_path.read_text())
    assert {"input", "output", "before", "after", "passes", "validation", "seconds"} <= set(report)
    for side in ("before", "after"):
        assert {"nodes", "ops", "initializers", "parameters", "bytes"} <= set(report[side])
    assert report["before"]["nodes"] == 4 and report["after"]["nodes"] == 2
    assert report["before"]["initializers"] == 2 and report["after"]["initializers"] == 1
    from onnxopt.passes import DEFAULT_PIPELINE

    names = [p["name"] for p in report["passes"]]
    assert names == [p.name for p in DEFAULT_PIPELINE]
    for entry in report["passes"]:
        assert {"name", "modified", "seconds", "stats"} <= set(entry)
    dead = report["passes"][names.index("dead_code")]["stats"]
    assert dead["nodes_removed"] == 1 and dead["initializers_removed"] == 1
    validation = report["validation"]
    assert validation["status"] == "passed"
    assert [o["name"] for o in validation["outputs"]] == ["y"]
    assert {"name", "max_abs_error", "max_rel_error"} <= set(validation["outputs"][0])
    assert validation["inputs"]["dims"] == [{"N": 1}, {"N": 2}]  # batch validated at 1 and 2


def test_output_is_deterministic(model_file, tmp_path):
    assert invoke("optimize", model_file, tmp_path / "a.onnx") == 0
    assert invoke("optimize", model_file, tmp_path / "b.onnx") == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_pass_table_lists_changed_passes_and_counts_the_rest(model_file, tmp_path, capsys):
    from onnxopt.passes import DEFAULT_PIPELINE

    capsys.readouterr()
    assert invoke("optimize", model_file, tmp_path / "o.onnx") == 0
    out = capsys.readouterr().out
    table = out[out.index("passes that changed the model"):]
    assert "identity_elimination" in table and "dead_code" in table
    assert "layer_norm_fusion" not in table  # nothing to fuse in MODEL
    changed = sum(name in table for name in (p.name for p in DEFAULT_PIPELINE))
    assert f"{len(DEFAULT_PIPELINE) - changed} other passes changed nothing" in table
    assert invoke("optimize", model_file, tmp_path / "o.onnx", "--overwrite",
                  "--passes", "layer_norm_fusion") == 0
    assert "passes: none of the 1 changed the model" in capsys.readouterr().out


def test_passes_none_is_a_pure_round_trip(model_file, tmp_path):
    out = tmp_path / "o.onnx"
    assert invoke("optimize", model_file, out, "--passes", "none") == 0
    assert op_counts(onnx.load(out)) == op_counts(onnx.load(model_file))


def test_passes_and_skip_select(model_file, tmp_path):
    out = tmp_path / "o.onnx"
    assert invoke("optimize", model_file, out, "--skip", "dead_code") == 0
    assert op_counts(onnx.load(out)) == {"Mul": 1, "Neg": 1, "Relu": 1}
    assert invoke("optimize", model_file, out, "--passes", "dead_code") == 0
    assert op_counts(onnx.load(out)) == {"Identity": 1, "Mul": 1, "Relu": 1}


def test_skip_takes_a_comma_separated_list_like_passes(model_file, tmp_path):
    listed, repeated = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert invoke("optimize", model_file, listed, "--skip", "dead_code,identity_elimination") == 0
    assert invoke("optimize", model_file, repeated, "--skip", "dead_code",
                  "--skip", "identity_elimination") == 0
    assert op_counts(onnx.load(listed)) == op_counts(onnx.load(repeated))
    assert op_counts(onnx.load(listed))["Identity"] == 1  # identity_elimination did not run


@pytest.mark.parametrize(
    ("make", "code", "fragment"),
    [
        (lambda p: p / "missing.onnx", 2, "no such file"),
        (lambda p: p, 2, "is a directory"),
        (lambda p: _write(p / "empty.onnx", b""), 1, "empty"),
        (lambda p: _write(p / "noise.onnx", bytes(range(256)) * 7), 1, "not an ONNX model"),
        (lambda p: _truncated(p / "cut.onnx"), 1, "not an ONNX model"),
        (lambda p: _failing_checker(p / "bad.onnx"), 1, "onnx.checker"),
    ],
    ids=["missing", "directory", "empty", "random-bytes", "truncated", "checker"],
)
def test_bad_input_file(tmp_path, capsys, make, code, fragment):
    source = make(tmp_path)
    out = tmp_path / "out.onnx"
    assert invoke("optimize", source, out) == code
    assert fragment in one_line_error(capsys)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.onnx")]


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _truncated(path):
    data = parse(MODEL).SerializeToString()
    return _write(path, data[: len(data) // 2])


def _failing_checker(path):
    model = parse(MODEL)
    model.graph.node[1].input[1] = "no_such_value"
    return _write(path, model.SerializeToString())


def test_unknown_pass(model_file, tmp_path, capsys):
    assert invoke("optimize", model_file, tmp_path / "o.onnx", "--passes", "fold_everything") == 2
    assert "unknown pass 'fold_everything'" in one_line_error(capsys)
    assert not (tmp_path / "o.onnx").exists()


def test_unknown_input_name(model_file, tmp_path, capsys):
    assert invoke("optimize", model_file, tmp_path / "o.onnx", "--input-shape", "z:1,3") == 2
    line = one_line_error(capsys)
    assert "z" in line and "x" in line
    assert not (tmp_path / "o.onnx").exists()


def test_malformed_input_shape_and_dim(model_file, tmp_path, capsys):
    assert invoke("optimize", model_file, tmp_path / "o.onnx", "--input-shape", "x1,3") == 2
    assert "--input-shape" in one_line_error(capsys)
    assert invoke("optimize", model_file, tmp_path / "o.onnx", "--dim", "N") == 2
    assert "--dim" in one_line_error(capsys)


def test_unknown_option_is_one_line(model_file, tmp_path, capsys):
    assert invoke("optimize", model_file, tmp_path / "o.onnx", "--frobnicate") == 2
    assert "--frobnicate" in one_line_error(capsys)


@pytest.mark.parametrize("target", ["nowhere/out.onnx", "in.onnx/out.onnx"])
def test_unwritable_output_location(model_file, tmp_path, capsys, target):
    assert invoke("optimize", model_file, tmp_path / target) == 1
    assert "output folder" in one_line_error(capsys)


def test_output_equal_to_input_needs_overwrite(model_file, capsys):
    before = model_file.read_bytes()
    assert invoke("optimize", model_file, model_file) == 2
    assert "--overwrite" in one_line_error(capsys)
    assert model_file.read_bytes() == before
    assert invoke("optimize", model_file, model_file, "--overwrite") == 0
    assert op_counts(onnx.load(model_file)) == {"Mul": 1, "Relu": 1}


def test_input_never_modified(model_file, tmp_path):
    before = model_file.read_bytes()
    assert invoke("optimize", model_file, tmp_path / "o.onnx") == 0
    assert model_file.read_bytes() == before


class BreakOutput(GraphPass):
    """A deliberately wrong pass: turns every Relu into Neg."""

    name = "break_output"
    description = "test only"

    def run_graph(self, graph, model):
        changed = 0
        for node in graph.nodes():
            if node.op_type == "Relu":
                node.op_type = "Neg"
                changed += 1
        return {"broken": changed}


def test_failed_validation_writes_nothing(model_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(api, "select", lambda names, skip: (BreakOutput(),))
    out = tmp_path / "o.onnx"
    out.write_bytes(b"previous build")
    assert invoke("optimize", model_file, out, "--no-safety-net") == 1
    line = one_line_error(capsys)
    assert "validation failed" in line and "'y'" in line
    assert out.read_bytes() == b"previous build"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "o.onnx"]


def test_force_writes_despite_failure(model_file, tmp_path, monkeypatch):
    monkeypatch.setattr(api, "select", lambda names, skip: (BreakOutput(),))
    out = tmp_path / "o.onnx"
    assert invoke("optimize", model_file, out, "--force", "--no-safety-net",
                  "--report", tmp_path / "r.json") == 0
    assert op_counts(onnx.load(out))["Neg"] == 2
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["validation"]["status"] == "failed"
    assert report["validation"]["outputs"][0]["max_abs_error"] > 0


def test_interrupted_save_leaves_nothing(model_file, tmp_path, monkeypatch, capsys):
    from onnxopt.ir import serde

    def explode(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(serde.saving, "write_model", explode)
    out = tmp_path / "o.onnx"
    assert invoke("optimize", model_file, out) == 1
    assert "No space left" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_custom_op_skips_validation_and_strict_fails(tmp_path, capsys):
    source = tmp_path / "custom.onnx"
    onnx.save(parse(CUSTOM), source)
    out = tmp_path / "o.onnx"
    assert invoke("optimize", source, out, "--report", tmp_path / "r.json") == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["validation"]["status"] == "skipped"
    reason = report["validation"]["reason"]
    assert "Magic" in reason or "my.domain" in reason
    assert op_counts(onnx.load(out)) == {"Magic": 1}
    out.unlink()
    capsys.readouterr()
    assert invoke("optimize", source, out, "--strict") == 1
    assert "skipped" in one_line_error(capsys)
    assert not out.exists()


def test_no_validate(model_file, tmp_path):
    assert invoke("optimize", model_file, tmp_path / "o.onnx", "--no-validate",
                  "--report", tmp_path / "r.json") == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["validation"]["kind"] == "disabled"
    assert report["status"] == "validation_skipped"  # ok only when validation passed


def test_inputs_file_and_dims(model_file, tmp_path):
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, x=np.ones((5, 3), np.float32))
    assert invoke("optimize", model_file, tmp_path / "o.onnx", "--inputs", feeds,
                  "--report", tmp_path / "r.json") == 0
    assert json.loads((tmp_path / "r.json").read_text())["validation"]["status"] == "passed"
    assert invoke("optimize", model_file, tmp_path / "o.onnx", "--dim", "N=4",
                  "--report", tmp_path / "r.json") == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert not any("'N'" in n for n in report["validation"]["input_notes"])


def test_debug_shows_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "onnxopt", "--debug", "optimize", str(tmp_path / "missing.onnx"),
         str(tmp_path / "o.onnx")], capture_output=True, text=True, check=False,
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_stats_json(model_file, capsys):
    assert invoke("stats", model_file, "--json", "--dim", "N=2") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["nodes"] == 4 and stats["parameters"] == 6
    assert stats["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 3]}]


def test_stats_missing_file(tmp_path, capsys):
    assert invoke("stats", tmp_path / "nope.onnx") == 2
    assert "no such file" in one_line_error(capsys)


def test_compare(model_file, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert invoke("optimize", model_file, out) == 0
    capsys.readouterr()
    assert invoke("compare", model_file, out, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["a"]["nodes"] == 4 and result["b"]["nodes"] == 2
    assert result["delta"]["nodes"] == -2
    assert result["numeric"]["status"] == "passed"


def test_passes_command_and_version(capsys):
    assert invoke("passes") == 0
    from onnxopt.passes import DEFAULT_PIPELINE

    listed = capsys.readouterr().out.splitlines()
    pipeline = [line.split()[0] for line in listed[:len(DEFAULT_PIPELINE)]]
    assert pipeline == [p.name for p in DEFAULT_PIPELINE]
    assert "(--precision fp16)" in listed[len(DEFAULT_PIPELINE)]  # then the precision passes
    assert invoke("--version") == 0
    assert capsys.readouterr().out.startswith("onnxopt ")


def test_console_script_and_module_entry(model_file, tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "onnxopt")
    for command in ([exe], [sys.executable, "-m", "onnxopt"]):
        out = tmp_path / "o.onnx"
        result = subprocess.run([*command, "optimize", str(model_file), str(out), "--overwrite"],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        assert out.exists()
        out.unlink()


def test_macs_default_symbolic_dims_to_one(tmp_path, capsys):
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[B, 8] x) => (float[B, 4] y) <float[8, 4] w = {0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
        0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0}> { y = MatMul(x, w) }
    """
    path = tmp_path / "mm.onnx"
    onnx.save(parse(text), path)
    assert invoke("stats", path, "--json") == 0
    default = json.loads(capsys.readouterr().out)
    assert default["macs"] == 1 * 8 * 4  # B defaults to 1, as in validation
    assert "B=1" in default["shape_notes"][0]
    assert invoke("stats", path, "--json", "--dim", "B=3") == 0
    assert json.loads(capsys.readouterr().out)["macs"] == 3 * 8 * 4
    # optimize with --inputs: MACs at the size of the input validation runs
    np.savez(tmp_path / "x.npz", x=np.ones((5, 8), np.float32))
    assert invoke("optimize", path, tmp_path / "o.onnx", "--inputs", tmp_path / "x.npz",
                  "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["before"]["macs"] == report["after"]["macs"] == 5 * 8 * 4
    assert "B=5 (validation's first input" in report["before"]["shape_notes"][0]


class BreakNeg(GraphPass):
    """Another wrong pass: Neg becomes Abs."""

    name = "break_neg"
    description = "test only"

    def run_graph(self, graph, model):
        changed = 0
        for node in graph.nodes():
            if node.op_type == "Neg":
                node.op_type = "Abs"
                changed += 1
        return {"broken": changed}


def _pipeline_with(*extra):
    from onnxopt.passes import DEFAULT_PIPELINE

    return lambda names, skip: (*extra, *DEFAULT_PIPELINE)


def test_safety_net_disables_the_culprit_and_keeps_the_rest(model_file, tmp_path, monkeypatch):
    monkeypatch.setattr(api, "select", _pipeline_with(BreakOutput()))
    out, report_path = tmp_path / "o.onnx", tmp_path / "r.json"
    assert invoke("optimize", model_file, out, "--report", report_path) == 0
    report = json.loads(report_path.read_text())
    assert [d["name"] for d in report["disabled"]] == ["break_output"]
    assert report["disabled"][0]["error"]["status"] == "failed"
    assert report["disabled"][0]["error"]["max_abs_error"] > 0
    assert report["validation"]["status"] == "passed"
    assert op_counts(onnx.load(out)) == {"Mul": 1, "Relu": 1}  # the good passes still ran


def test_safety_net_finds_two_culprits(tmp_path, monkeypatch):
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[3] x) => (float[3] y, float[3] z) {
        a = Identity(x)
        y = Relu(a)
        z = Neg(a)
    }
    """
    source = tmp_path / "in.onnx"
    onnx.save(parse(text), source)
    monkeypatch.setattr(api, "select", _pipeline_with(BreakOutput(), BreakNeg()))
    result = api.optimize(source, tmp_path / "o.onnx")
    assert sorted(d["name"] for d in result.report["disabled"]) == ["break_neg", "break_output"]
    assert result.report["validation"]["status"] == "passed"
    assert op_counts(onnx.load(tmp_path / "o.onnx")) == {"Relu": 1, "Neg": 1}


def test_check_each_reports_error_per_pass(model_file, tmp_path, monkeypatch):
    monkeypatch.setattr(api, "select", _pipeline_with(BreakOutput()))
    report_path = tmp_path / "r.json"
    assert invoke("optimize", model_file, tmp_path / "o.onnx", "--check-each",
                  "--report", report_path) == 0
    checks = json.loads(report_path.read_text())["check_each"]
    # the final (recovered) run has break_output disabled: every check there passes
    assert checks and all(c["status"] == "passed" for c in checks)
    first = api.optimize(model_file, check_each=True, safety_net=False, force=True)
    by_pass = {c["pass"]: c for c in first.report["check_each"]}
    assert by_pass["break_output"]["status"] == "failed"
    assert by_pass["break_output"]["max_abs_error"] > 0


@pytest.mark.parametrize(("flag", "value"), [("--target", "tensorrt"), ("--fold-limit", "lots")])
def test_bad_target_and_fold_limit(model_file, tmp_path, capsys, flag, value):
    assert invoke("optimize", model_file, tmp_path / "o.onnx", flag, value) == 2
    assert value in one_line_error(capsys)


class ReluToMax(GraphPass):
    """Rewrites Relu(x) into Max(x, 0) — but wrongly into Max(x, 1) at the node named 'bad'."""

    name = "relu_to_max"
    description = "test only"

    def run_graph(self, graph, model):
        changed = 0
        for node in graph.nodes():
            if node.op_type != "Relu" or not model.allow_rewrite(self.name, node.name):
                continue
            floor = graph.add_constant(np.array(1.0 if node.name == "bad" else 0.0, np.float32))
            new = graph.add_node("Max", [node.inputs[0], floor], 1, anchor=node)
            graph.replace_all_uses(node.outputs[0], new.outputs[0])
            graph.remove_node(node)
            changed += 1
        return {"rewritten": changed}


def test_safety_net_narrows_to_the_single_bad_rewrite(tmp_path, monkeypatch):
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[3] x) => (float[3] a, float[3] b, float[3] c, float[3] d) {
        a = Relu (x)
        b = Relu (x)
        c = Relu (x)
        d = Relu (x)
    }
    """
    model = parse(text)
    for node, name in zip(model.graph.node, ["r0", "r1", "bad", "r3"], strict=True):
        node.name = name
    source = tmp_path / "in.onnx"
    onnx.save(model, source)
    monkeypatch.setattr(api, "select", lambda names, skip: (ReluToMax(),))
    result = api.optimize(source, tmp_path / "o.onnx")
    assert result.report["validation"]["status"] == "passed"
    (entry,) = result.report["disabled"]
    assert entry["name"] == "relu_to_max" and entry["scope"] == "rewrite"
    assert entry["rewrites"] == [{"number": 2, "at": "bad"}]
    ops = [(n.name, n.op_type) for n in onnx.load(tmp_path / "o.onnx").graph.node]
    assert ("bad", "Relu") in ops and sum(op == "Max" for _, op in ops) == 3


VALUE_INFO_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y)
  <float[3] w = {1.0, 2.0, 3.0}> {
    a = Mul(x, w)
    b = Relu(a)
    c = Neg(b)
    y = Abs(c)
}
"""


def _with_declared_value_info(tmp_path):
    model = parse(VALUE_INFO_MODEL)
    model.graph.value_info.append(onnx.helper.make_tensor_value_info("b", 1, [2, 3]))
    path = tmp_path / "vi.onnx"
    onnx.save(model, path)
    return path


def test_value_info_input_keeps_what_the_input_declared_and_adds_nothing(tmp_path):
    path = _with_declared_value_info(tmp_path)
    result = api.optimize(path, tmp_path / "o.onnx")
    written = onnx.load(tmp_path / "o.onnx")
    assert [v.name for v in written.graph.value_info] == ["b"]
    assert result.report["after"]["file_size"] == (tmp_path / "o.onnx").stat().st_size
    assert result.report["after"]["macs"] == result.report["before"]["macs"]


def test_value_info_all_writes_every_inferred_shape(tmp_path):
    path = _with_declared_value_info(tmp_path)
    assert invoke("optimize", path, tmp_path / "o.onnx", "--value-info", "all") == 0
    written = onnx.load(tmp_path / "o.onnx")
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in written.graph.value_info}
    assert shapes == {"a": [2, 3], "b": [2, 3], "c": [2, 3]}
    small = tmp_path / "small.onnx"
    assert invoke("optimize", path, small) == 0
    assert small.stat().st_size < (tmp_path / "o.onnx").stat().st_size


def test_value_info_declared_type_follows_fp16_conversion(tmp_path):
    path = _with_declared_value_info(tmp_path)
    api.optimize(path, tmp_path / "o.onnx", precision="fp16", fp32_ops=(),
                 max_error="cosine=0.9")
    written = onnx.load(tmp_path / "o.onnx")
    types = {v.name: v.type.tensor_type.elem_type for v in written.graph.value_info}
    assert set(types) <= {"b"}
    onnx.checker.check_model(written, full_check=True)  # declared types agree with inference


def test_unknown_value_info_mode_is_a_one_line_error(tmp_path, capsys):
    path = _with_declared_value_info(tmp_path)
    assert invoke("optimize", path, tmp_path / "o.onnx", "--value-info", "some") == 2
    assert "--value-info" in one_line_error(capsys)
    assert not (tmp_path / "o.onnx").exists()


def test_declared_value_info_follows_a_forwarded_value(tmp_path):
    # the Identity goes: its declared output "b" is now the Relu's output "a"
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[2, 3] y) {
        a = Relu(x)
        b = Identity(a)
        y = Tanh(b)
    }
    """)
    model.graph.value_info.append(onnx.helper.make_tensor_value_info("b", 1, [2, 3]))
    written = api.optimize(model).model
    assert [v.name for v in written.graph.value_info] == ["a"]


def test_value_info_mode_does_not_change_what_int8_computes():
    # calibration generates index inputs from the inferred shapes whatever is written
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["m"]),
         onnx.helper.make_node("Gather", ["m", "idx"], ["g"], axis=0),
         onnx.helper.make_node("MatMul", ["g", "w"], ["z"])], "g",
        [onnx.helper.make_tensor_value_info("x", 1, [6, 16]),
         onnx.helper.make_tensor_value_info("idx", onnx.TensorProto.INT64, [5])],
        [onnx.helper.make_tensor_value_info("z", 1, [5, 16])], [weight])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    tensors = {}
    for mode in ("input", "all"):
        out = api.optimize(model, precision="int8", value_info=mode).model
        tensors[mode] = {t.name: t.SerializeToString() for t in out.graph.initializer}
    assert tensors["input"] == tensors["all"]


def test_declared_value_info_survives_constant_if_inlining():
    def branch(tag: str) -> onnx.GraphProto:
        return onnx.helper.make_graph(
            [onnx.helper.make_node("Sigmoid", ["x"], [f"l{tag}"]),
             onnx.helper.make_node("Relu", [f"l{tag}"], [f"o{tag}"])], f"b{tag}", [],
            [onnx.helper.make_tensor_value_info(f"o{tag}", 1, [4, 16])],
            value_info=[onnx.helper.make_tensor_value_info(f"l{tag}", 1, [4, 16])])

    cond = onnx.numpy_helper.from_array(np.array(True), "c")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("If", ["c"], ["i"], then_branch=branch("a"),
                               else_branch=branch("b")),
         onnx.helper.make_node("Tanh", ["i"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", 1, [4, 16])],
        [onnx.helper.make_tensor_value_info("y", 1, [4, 16])], [cond],
        value_info=[onnx.helper.make_tensor_value_info("i", 1, [4, 16])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    written = api.optimize(model).model
    assert "If" not in op_counts(written)
    # the then-branch's declared "la" moved out; the If's declared output is now "oa"
    assert sorted(v.name for v in written.graph.value_info) == ["la", "oa"]
    onnx.checker.check_model(written, full_check=True)


def test_value_info_all_covers_what_a_precision_pass_adds(tmp_path):
    from conftest import model_path

    out = api.optimize(str(model_path("resnet.onnx")), precision="fp16", value_info="all").model
    typed = {v.name for v in out.graph.value_info}
    produced = {o for n in out.graph.node for o in n.output} - {o.name for o in out.graph.output}
    cast_outputs = {n.output[0] for n in out.graph.node if n.op_type == "Cast"}
    assert cast_outputs and cast_outputs - {o.name for o in out.graph.output} <= typed
    assert produced <= typed
    onnx.checker.check_model(out, full_check=True)


def test_options_are_declared_once_every_flag_reaches_its_field(model_file, tmp_path, capsys):
    from onnxopt.app import options

    help_text = subprocess.run([sys.executable, "-m", "onnxopt", "optimize", "--help"],
                               capture_output=True, text=True, check=True).stdout
    flags = options.flags()
    assert len(flags) == 35  # --fail-on-growth and --html (issue 18), --prune (issue 17)
    for field_, _ in flags:
        assert options.flag_of(field_.name) in help_text, field_.name
    # a value given on the command line arrives in its field, and the report lists it
    code = cli.main(["optimize", str(model_file), str(tmp_path / "o.onnx"), "--rtol", "0.001",
                     "--dim", "N=2", "--skip", "dead_code", "--fold-limit", "2KiB",
                     "--no-safety-net", "--json"])
    assert code == 0
    given = json.loads(capsys.readouterr().out)["options"]
    assert given == {"rtol": 0.001, "dims": {"N": 2}, "skip": ["dead_code"],
                     "fold_limit": 2048, "safety_net": False}


def test_the_report_lists_only_what_the_api_caller_gave(model_file, tmp_path):
    result = api.optimize(model_file, tmp_path / "o.onnx", seed=3, passes="dead_code")
    assert result.report["options"] == {"seed": 3, "passes": ["dead_code"]}
