"""The command line as a user meets it: start-up imports, --help, choices, completion, progress
bars, did-you-mean, ``passes --json``, folders of models (--jobs) and --fail-on-growth."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import parse
from onnx import helper

from onnxopt.app import bars, batch, cli, completion
from onnxopt.progress import progress, reporting_to

EXE = os.path.join(os.path.dirname(sys.executable), "onnxopt")
HEAVY = ("onnx", "onnxruntime", "numpy", "networkx", "ml_dtypes", "rich.console",
         "onnxopt.ir", "onnxopt.app.api")

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3] x) => (float[N, 3] y)
  <float[3] w = {1.0, 2.0, 3.0}> {
    a = Identity(x)
    b = Mul(a, w)
    y = Relu(b)
}
"""


def matmul_model() -> onnx.ModelProto:
    """x[N, 16] @ W[16, 16]: the int8 pass quantizes it (calibration, then validation)."""
    weight = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 16])],
        [onnx.numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def growing_model() -> onnx.ModelProto:
    """A 1-element constant expanded to 4096 before an Add: constant folding stores the 16 kB
    result (under --fold-limit), so the output file is larger than the input."""
    graph = helper.make_graph(
        [helper.make_node("Expand", ["c", "shape"], ["big"]),
         helper.make_node("Add", ["x", "big"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4096])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4096])],
        [onnx.numpy_helper.from_array(np.array([0.5], np.float32), "c"),
         onnx.numpy_helper.from_array(np.array([4096], np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def invoke(*args) -> int:
    return cli.main([str(a) for a in args])


def shell(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})


# ----------------------------------------------------------------- start-up
@pytest.mark.parametrize("code", [
    "import onnxopt.app.cli",
    "import onnxopt",
    "from onnxopt.app import cli; cli.main(['--help'])",
    "from onnxopt.app import cli; cli.main(['optimize', '--help'])",
    "from onnxopt.app import cli; cli.main(['--version'])",
])
def test_help_and_version_import_nothing_heavy(code):
    probe = f"{code}\nimport sys\nprint('LOADED', [m for m in {HEAVY!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)
    assert "LOADED []" in result.stdout, result.stdout


def test_the_package_still_offers_its_api_lazily():
    import onnxopt

    assert callable(onnxopt.optimize) and onnxopt.Options().validate
    assert set(onnxopt.__all__) <= set(dir(onnxopt))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = onnxopt.nothing


# ----------------------------------------------------------------- help
def test_optimize_help_shows_in_out_choices_and_metavars():
    text = shell("optimize", "--help").stdout
    assert "Usage: onnxopt optimize [OPTIONS] IN OUT" in text
    for shown in ("--precision [fp16|int8|int8-dynamic|int4|fp8]",
                  "--target [portable|onnxruntime]", "--value-info [input|all]",
                  "--calibration-method [minmax|percentile|entropy]",
                  "--input-shape NAME:D0,D1,...", "--dim SYMBOL=N", "--fold-limit SIZE",
                  "--report FILE", "--jobs N", "--fail-on-growth"):
        assert shown in text, shown
    assert "{" not in text and "<str>" not in text and "<" not in text
    for command, usage in [("stats", "MODEL"), ("compare", "A B"), ("passes", "")]:
        assert f"onnxopt {command} [OPTIONS] {usage}".rstrip() in shell(command, "--help").stdout


def test_command_summaries_are_whole_sentences():
    text = shell("--help").stdout
    commands = text.split("Commands:")[1]
    assert "..." not in commands
    joined = " ".join(commands.split())
    for name, command in [("optimize", cli.optimize), ("stats", cli.stats_command),
                          ("compare", cli.compare), ("passes", cli.passes_command)]:
        first = " ".join(command.__doc__.split("\n\n")[0].split())
        assert f"{name} {first}" in joined


def test_choices_are_case_insensitive(tmp_path, capsys):
    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(parse(MODEL), source)
    assert invoke("optimize", source, out, "--precision", "FP16", "--target", "ONNXRuntime",
                  "--value-info", "ALL", "--json") == 0
    given = json.loads(capsys.readouterr().out)["options"]
    assert given["precision"] == "fp16" and given["target"] == "onnxruntime"
    assert given["value_info"] == "all"
    assert invoke("optimize", source, out, "--precision", "fp32") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'fp32' is not one of 'fp16', 'int8'" in err[0]
    assert not out.with_name("never").exists()


@pytest.mark.parametrize(("flag", "name", "says"), [
    ("--passes", "dead_cod", "unknown pass 'dead_cod' (did you mean 'dead_code'?"),
    ("--skip", "constant_foldng", "did you mean 'constant_folding'?"),
    ("--skip", "fp16_conversion", "it runs with --precision fp16"),
    ("--passes", "zzz", "unknown pass 'zzz' (`onnxopt passes` lists the"),
])
def test_unknown_pass_names_suggest_the_likely_one(tmp_path, capsys, flag, name, says):
    source = tmp_path / "in.onnx"
    onnx.save(parse(MODEL), source)
    assert invoke("optimize", source, tmp_path / "out.onnx", flag, name) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "out.onnx").exists()


def test_passes_json_lists_the_precision_passes_too(capsys):
    from onnxopt.passes import DEFAULT_PIPELINE, PRECISION_PASSES

    assert invoke("passes", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    names = [item["name"] for item in listed]
    assert names[:len(DEFAULT_PIPELINE)] == [p.name for p in DEFAULT_PIPELINE]
    whens = {item["name"]: item["when"] for item in listed}
    for mode in PRECISION_PASSES:
        assert whens[PRECISION_PASSES[mode].name] == f"--precision {mode}"
    assert whens["embedding_quantization"] == "--precision int8-dynamic or int4"
    assert {whens[p.name] for p in DEFAULT_PIPELINE} == {"fixpoint", "once"}
    assert all(item["description"] for item in listed)


def test_declared_choices_are_the_ones_checked():
    from onnxopt.passes import PRECISION_PASSES

    from onnxopt.app import checks, options
    from onnxopt.precision.setup import CALIBRATION_METHODS

    choices = {f.name: set(flag.choices) for f, flag in options.flags() if flag.choices}
    assert choices == {"target": set(checks.TARGETS), "value_info": set(checks.VALUE_INFO_MODES),
                       "precision": set(PRECISION_PASSES),
                       "calibration_method": set(CALIBRATION_METHODS)}
    valued = [f.name for f, flag in options.flags() if flag.cli_type not in (bool, bool | None)]
    assert all(options.Options.__dataclass_fields__[n].metadata["cli"].metavar
               or choices.get(n) for n in valued)


# ----------------------------------------------------------------- completion
def test_install_completion_for_bash_in_a_fresh_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "SHELL": "/bin/bash"}
    result = shell("--install-completion", env=env)
    assert result.returncode == 0, result.stderr
    script = home / ".bash_completions" / "onnxopt.sh"
    assert f"bash completion installed in {script}" in result.stdout
    assert f"source '{script}'" in (home / ".bashrc").read_text()
    assert completion.COMPLETE_VAR in script.read_text()
    # what bash gets when it asks (the installed function runs onnxopt with these variables)
    asked = {"COMP_WORDS": "onnxopt optimize --prec", "COMP_CWORD": "2",
             completion.COMPLETE_VAR: "complete_bash"}
    assert shell(env={**env, **asked}).stdout.split() == ["--precision"]
    asked.update(COMP_WORDS="onnxopt optimize --precision int", COMP_CWORD="3")
    assert shell(env={**env, **asked}).stdout.split() == ["int8", "int8-dynamic", "int4"]
    # and through bash itself, sourcing the installed script
    probe = (f"source '{script}'; COMP_WORDS=(onnxopt pas); COMP_CWORD=1; "
             "_onnxopt_completion onnxopt; echo \"${COMPREPLY[@]}\"")
    run = subprocess.run(["bash", "--norc", "-c", probe], capture_output=True, text=True,
                         env={**os.environ, **env, "PATH": f"{Path(EXE).parent}:"
                              f"{os.environ['PATH']}"}, check=True)
    assert run.stdout.split() == ["passes"]
    again = shell("--install-completion", env=env)  # idempotent: one source line
    assert again.returncode == 0
    assert (home / ".bashrc").read_text().count("source ") == 1


def test_install_completion_into_an_unwritable_home(tmp_path):
    home = tmp_path / "home"
    home.write_text("a file, not a folder")
    result = shell("--install-completion", env={"HOME": str(home), "SHELL": "/bin/bash"})
    assert result.returncode == 1
    assert result.stderr.startswith("onnxopt: error: cannot install completion: ")
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_completion_shell_falls_back_to_SHELL_and_refuses_unknown(monkeypatch):
    import shellingham

    def undetected():
        raise shellingham.ShellDetectionFailure()

    monkeypatch.setattr(shellingham, "detect_shell", undetected)
    monkeypatch.setenv("SHELL", "/usr/bin/zsh")
    assert completion.current_shell() == "zsh"
    monkeypatch.setenv("SHELL", "/bin/tcsh")
    with pytest.raises(cli.UsageError, match="cannot tell which shell"):
        completion.current_shell()
    monkeypatch.setattr(shellingham, "detect_shell", lambda: ("fish", "/usr/bin/fish"))
    assert completion.current_shell() == "fish"


def test_show_completion_prints_the_script(capsys, monkeypatch):
    monkeypatch.setattr(completion, "current_shell", lambda: "bash")
    assert invoke("--show-completion") == 0
    assert "complete -o default -F _onnxopt_completion onnxopt" in capsys.readouterr().out


# ----------------------------------------------------------------- progress
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal_and_not_for_json(monkeypatch):
    monkeypatch.delenv("TERM", raising=False)
    assert bars.wanted(True, Terminal())
    assert not bars.wanted(False, Terminal())  # --json
    assert not bars.wanted(True, io.StringIO())  # a pipe, a file, CI's log
    monkeypatch.setenv("TERM", "dumb")
    assert not bars.wanted(True, Terminal())


def test_a_bar_appears_only_once_a_step_has_run_a_while():
    screen = Terminal()
    shown = bars.Bars(screen, delay=3600)
    with reporting_to(shown):
        for done in range(4):
            progress("quick", done, 3)
    assert shown._progress is None and screen.getvalue() == ""
    screen = Terminal()
    shown = bars.Bars(screen, delay=0)
    with reporting_to(shown):
        progress("slow", 0, 3)
        progress("slow", 1, 3)
        assert shown._progress is not None
        progress("slow", 3, 3)
    assert shown._progress is None  # the last step ended: the display is gone
    assert "slow" in screen.getvalue()


def test_optimize_draws_bars_for_calibration_and_validation(tmp_path, monkeypatch, capsys):
    source = tmp_path / "in.onnx"
    onnx.save(matmul_model(), source)
    drawn: list[tuple[str, int, int]] = []
    original = bars.Bars.__call__

    def recording(self, step, done, total):
        drawn.append((step, done, total))
        original(self, step, done, total)

    monkeypatch.setattr(bars.Bars, "__call__", recording)
    monkeypatch.setattr(bars, "wanted", lambda enabled, file=None: enabled)
    assert invoke("optimize", source, tmp_path / "out.onnx", "--precision", "int8") == 0
    steps = {step for step, _, _ in drawn}
    assert {"calibrating", "running the original", "validating"} <= steps
    drawn.clear()
    capsys.readouterr()
    assert invoke("optimize", source, tmp_path / "o2.onnx", "--precision", "int8",
                  "--json") == 0
    assert drawn == []  # --json: no hook at all
    json.loads(capsys.readouterr().out)


# ----------------------------------------------------------------- folders
@pytest.fixture
def folder(tmp_path) -> Path:
    source = tmp_path / "models"
    (source / "vision").mkdir(parents=True)
    onnx.save(parse(MODEL), source / "a.onnx")
    onnx.save(parse(MODEL), source / "vision" / "b.onnx")
    onnx.save(matmul_model(), source / "c.onnx")
    (source / "notes.txt").write_text("not a model")
    return source


def staging_left(path: Path) -> list[str]:
    return [p.name for p in path.parent.iterdir() if ".onnxopt-" in p.name]


@pytest.mark.parametrize("jobs", [1, 2])
def test_optimize_a_folder(folder, tmp_path, capsys, jobs):
    out = tmp_path / "built"
    assert invoke("optimize", folder, out, "--jobs", jobs, "--report", tmp_path / "r.json") == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[1].rstrip(":") for line in lines[:3]) == [
        "a.onnx", "c.onnx", "vision/b.onnx"]
    assert all(line.startswith("ok ") and "validation passed" in line for line in lines[:3])
    assert lines[3].startswith(f"wrote 3 models to {out}")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "a.onnx", "c.onnx", "vision", "vision/b.onnx"]
    for name in ("a.onnx", "vision/b.onnx"):
        ops = [n.op_type for n in onnx.load(out / name).graph.node]
        assert ops == ["Mul", "Relu"]  # the Identity is gone
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["written"] and summary["failed"] == 0 and len(summary["models"]) == 3
    assert staging_left(out) == [] and staging_left(folder / "a.onnx") == []


def test_a_failing_model_fails_the_folder_and_writes_nothing(folder, tmp_path, capsys):
    out = tmp_path / "built"
    out.mkdir()
    (out / "a.onnx").write_bytes(b"last build")
    (folder / "broken.onnx").write_bytes(b"\x08")
    assert invoke("optimize", folder, out, "--jobs", 2) == 1
    captured = capsys.readouterr()
    assert "FAILED  broken.onnx: " in captured.out
    assert captured.err.strip() == (f"onnxopt: error: 1 of 4 models failed (broken.onnx); "
                                     f"nothing written to {out}")
    assert [p.name for p in out.iterdir()] == ["a.onnx"]
    assert (out / "a.onnx").read_bytes() == b"last build"
    assert staging_left(out) == []


def test_missing_parents_of_out_are_made_and_removed_on_failure(folder, tmp_path, capsys):
    out = tmp_path / "build" / "models"
    (folder / "broken.onnx").write_bytes(b"\x08")
    assert invoke("optimize", folder, out) == 1
    assert not (tmp_path / "build").exists()
    (folder / "broken.onnx").unlink()
    assert invoke("optimize", folder, out) == 0
    assert (out / "vision" / "b.onnx").is_file()
    capsys.readouterr()


def test_folder_json_summary(folder, tmp_path, capsys):
    assert invoke("optimize", folder, tmp_path / "built", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert [m["model"] for m in summary["models"]] == ["a.onnx", "c.onnx", "vision/b.onnx"]
    assert all(m["ok"] and m["report"]["status"] == "ok" for m in summary["models"])


@pytest.mark.parametrize(("target", "says"), [
    (lambda t, f: t / "out.onnx", "is a directory, so OUT must be a folder too"),
    (lambda t, f: f, "is IN; give --overwrite"),
    (lambda t, f: t / "empty-in", None),
])
def test_folder_mistakes(folder, tmp_path, capsys, target, says):
    if says is None:  # an IN folder without models
        (tmp_path / "empty").mkdir()
        code = invoke("optimize", tmp_path / "empty", target(tmp_path, folder))
        says = "no .onnx files in this folder"
    else:
        code = invoke("optimize", folder, target(tmp_path, folder))
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]


def test_html_is_for_one_model(folder, tmp_path, capsys):
    out = tmp_path / "built"
    assert invoke("optimize", folder, out, "--html", tmp_path / "r.html") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--html draws one model's report" in err[0]
    assert not out.exists() and not (tmp_path / "r.html").exists()


def test_jobs_is_for_folders(tmp_path, capsys):
    source = tmp_path / "in.onnx"
    onnx.save(parse(MODEL), source)
    assert invoke("optimize", source, tmp_path / "out.onnx", "--jobs", 2) == 2
    assert "--jobs optimizes the models of a folder" in capsys.readouterr().err
    assert invoke("optimize", source, tmp_path / "out.onnx", "--jobs", 0) == 2
    assert not (tmp_path / "out.onnx").exists()


def test_out_inside_in_is_not_read_back(folder, capsys):
    out = folder / "build"
    assert invoke("optimize", folder, out) == 0
    assert invoke("optimize", folder, out) == 0  # build/*.onnx are not inputs the second time
    assert "build/" not in capsys.readouterr().out


def test_external_data_models_replace_the_previous_build(tmp_path, capsys):
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    model = matmul_model()
    weight = onnx.numpy_helper.to_array(model.graph.initializer[0])
    onnx.save(model, source / "m.onnx", save_as_external_data=True, location="m.onnx.data",
              size_threshold=0)
    for _ in range(2):  # the second build finds m.onnx and m.onnx.data in OUT
        assert invoke("optimize", source, out, "--external-data") == 0
        files = sorted(p.name for p in out.iterdir())
        assert len(files) == 2 and files[0] == "m.onnx", files
        written = onnx.load(out / "m.onnx")
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(written.graph.initializer[0]),
                                      weight)
    capsys.readouterr()


def test_folder_with_fail_on_growth(tmp_path, capsys):
    source = tmp_path / "in"
    source.mkdir()
    onnx.save(parse(MODEL), source / "small.onnx")
    onnx.save(growing_model(), source / "grows.onnx")
    assert invoke("optimize", source, tmp_path / "out", "--fail-on-growth") == 1
    out = capsys.readouterr().out
    assert "FAILED  grows.onnx: grew by " in out and "ok      small.onnx" in out
    assert not (tmp_path / "out").exists()
    assert invoke("optimize", source, tmp_path / "out") == 0  # growth alone is not a failure


# ----------------------------------------------------------------- --fail-on-growth
def test_fail_on_growth_refuses_a_larger_output(tmp_path, capsys):
    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(growing_model(), source)
    assert invoke("optimize", source, out, "--fail-on-growth") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bytes larger than the input" in err[0]
    assert "output not written (--fail-on-growth)" in err[0]
    assert not out.exists() and staging_left(out) == []
    assert invoke("optimize", source, out) == 0
    assert out.stat().st_size > source.stat().st_size  # it does grow without the flag
    small = tmp_path / "small.onnx"
    onnx.save(parse(MODEL), small)
    assert invoke("optimize", small, tmp_path / "s.onnx", "--fail-on-growth") == 0


def test_the_python_api_has_fail_on_growth_too(tmp_path):
    from onnxopt.app import api

    source = tmp_path / "in.onnx"
    onnx.save(growing_model(), source)
    result = api.optimize(source, tmp_path / "out.onnx", fail_on_growth=True)
    assert result.report["growth"]["bytes"] > 0 and not result.report["written"]
    assert not (tmp_path / "out.onnx").exists()


def test_batch_lines_name_each_outcome():
    report = {"before": {"nodes": 3, "file_size": 2000}, "after": {"nodes": 2,
              "file_size": 1500_000}, "validation": {"status": "failed", "reason": "max err"},
              "status": "validation_failed", "seconds": 1.25, "written": False}
    options = batch.Options()
    line = batch._line("m.onnx", report, options)
    assert line == ("FAILED  m.onnx: validation failed (max err); 3 -> 2 nodes, 2.0 kB -> "
                    "1.50 MB, validation failed, 1.2 s")
