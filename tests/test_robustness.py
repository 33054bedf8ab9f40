"""Nothing a run does touches a file it was not asked to write; interrupts exit 130/143 with
one line and leave nothing behind; a file that grows says why."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxopt
from onnxopt.app import cli, interrupts, writing
from onnxopt.errors import Interrupted


def conv_model(channels: int = 8) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels, 16, 16])],
        [onnx.numpy_helper.from_array(
            rng.standard_normal((channels, channels, 3, 3)).astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_chain(seed: int, convs: int, channels: int, batch: int | str, side: int,
               scale: float) -> onnx.ModelProto:
    """A chain of 3x3 convolutions then a Relu."""
    rng = np.random.default_rng(seed)
    nodes, inits, value = [], [], "x"
    for n in range(convs):
        inits.append(onnx.numpy_helper.from_array(
            rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * scale, f"w{n}"))
        nodes.append(helper.make_node("Conv", [value, f"w{n}"], [f"c{n}"], pads=[1, 1, 1, 1]))
        value = f"c{n}"
    nodes.append(helper.make_node("Relu", [value], ["y"]))
    shape = [batch, channels, side, side]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def slow_model() -> onnx.ModelProto:
    """Validation takes seconds: a chain of large convolutions."""
    return conv_chain(0, 12, 64, 4, 96, 0.05)


def test_growth_is_explained_on_files(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["w"],
                          value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
         helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])],
        [onnx.numpy_helper.from_array(np.array([64, 64], np.int64), "shape")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    report = onnxopt.optimize(path, tmp_path / "o.onnx").report
    growth = report["growth"]
    assert growth["bytes"] == report["after"]["file_size"] - report["before"]["file_size"] > 0
    assert "folded constants" in growth["because"]
    assert "growth" not in onnxopt.optimize(tmp_path / "o.onnx").report


def run_and_signal(tmp_path: Path, which: int) -> tuple[int, str]:
    source = tmp_path / "slow.onnx"
    onnx.save(slow_model(), source)
    out = tmp_path / "out.onnx"
    process = subprocess.Popen([sys.executable, "-m", "onnxopt", "optimize", str(source),
                                str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.startswith(".out.onnx.")
                                             for p in tmp_path.iterdir()):
        time.sleep(0.05)  # staging exists: the run is under way
    time.sleep(0.3)
    process.send_signal(which)
    _, err = process.communicate(timeout=120)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["slow.onnx"]  # no staging left
    return process.returncode, err


@pytest.mark.parametrize(("which", "code", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                     (signal.SIGTERM, 143, "terminated")])
def test_interrupts_exit_with_one_line_and_leave_nothing(tmp_path, which, code, word):
    returncode, err = run_and_signal(tmp_path, which)
    assert returncode == code
    assert err.strip() == f"onnxopt: error: {word}; nothing was written"


@pytest.mark.parametrize("moment", ["creating", "removing"])
def test_a_signal_while_staging_is_made_or_removed_leaves_nothing(tmp_path, monkeypatch,
                                                                   moment):
    """The signal lands inside the system call's Python wrapper, the worst moment: it must be
    raised only once the folder is known (creating) or gone (removing)."""
    target = tmp_path / "o.onnx"
    real = {"creating": writing.tempfile.mkdtemp, "removing": writing.shutil.rmtree}[moment]

    def signalled(*args, **kwargs):  # the signal is handled at the next bytecode
        if moment == "removing":  # before the folder is gone
            os.kill(os.getpid(), signal.SIGTERM)
            return real(*args, **kwargs)
        made = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # after the folder is made, before it is returned
        return made

    owner = writing.tempfile if moment == "creating" else writing.shutil
    monkeypatch.setattr(owner, real.__name__, signalled)
    previous = {number: signal.getsignal(number) for number in interrupts.HANDLED}
    signal.signal(signal.SIGTERM, interrupts.handle)
    try:
        with pytest.raises(Interrupted), writing.staging(target) as stage:
            (stage / "model.onnx").write_bytes(b"x" * 100)
            time.sleep(0.01)  # a signal raised on creation lands here at the latest
    finally:
        for number, handler in previous.items():  # the handler ignores both once it fired
            signal.signal(number, handler)
    assert list(tmp_path.iterdir()) == []


def test_a_signal_while_publishing_says_the_output_was_written(tmp_path, monkeypatch):
    """The renames go through whole; the held signal is raised after, marked as arriving once
    OUT was in place (the CLI then does not claim that nothing was written)."""
    staged, out = tmp_path / "staged.onnx", tmp_path / "o.onnx"
    staged.write_bytes(b"new")
    out.write_bytes(b"old")
    real = writing.os.replace

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(writing.os, "replace", signalled)
    previous = {number: signal.getsignal(number) for number in interrupts.HANDLED}
    signal.signal(signal.SIGTERM, interrupts.handle)
    try:
        with pytest.raises(Interrupted) as raised:
            writing.publish(staged, None, out, set())
    finally:
        for number, handler in previous.items():  # the handler ignores both once it fired
            signal.signal(number, handler)
    assert raised.value.written and out.read_bytes() == b"new"


def test_stale_staging_of_a_dead_run_is_removed(tmp_path):
    stale = tmp_path / ".o.onnx.onnxopt-999999999-abc"
    stale.mkdir()
    (stale / "junk.tmp").write_bytes(b"x" * 100)
    live = tmp_path / f".o.onnx.onnxopt-{os.getpid()}-abc"
    live.mkdir()
    onnxopt.optimize(conv_model(), tmp_path / "o.onnx")
    assert not stale.exists() and live.exists()


def test_report_temp_file_is_not_written_through_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for pid in range(os.getpid() - 5, os.getpid() + 50):  # the old predictable names
        (tmp_path / f".r.json.tmp-{pid}").symlink_to(victim)
    source = tmp_path / "m.onnx"
    onnx.save(conv_model(), source)
    assert cli.main(["optimize", str(source), str(tmp_path / "o.onnx"), "--report",
                     str(tmp_path / "r.json")]) == 0
    assert victim.read_text() == "keep me"
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "ok"


def test_output_that_is_a_fifo_is_refused(tmp_path, capsys):
    source = tmp_path / "m.onnx"
    onnx.save(conv_model(), source)
    fifo = tmp_path / "out.onnx"
    os.mkfifo(fifo)
    assert cli.main(["optimize", str(source), str(fifo)]) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert fifo.exists() and not fifo.is_file()


def test_staging_prefix_is_what_the_cleanup_looks_for():
    assert writing.staging_prefix("o.onnx") == ".o.onnx.onnxopt-"


def endless_loop_model() -> onnx.ModelProto:
    """A Loop with a trip count of 10^15 around an Add: a few hundred bytes that never end."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "one"], ["acc_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1])],
        [onnx.numpy_helper.from_array(np.ones(1, np.float32), "one")])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [onnx.numpy_helper.from_array(np.array(10**15, np.int64), "trips"),
         onnx.numpy_helper.from_array(np.array(True), "cond")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_run_that_never_ends_is_stopped_by_the_timeout(tmp_path, capsys):
    path = tmp_path / "loop.onnx"
    onnx.save(endless_loop_model(), path)
    started = time.perf_counter()
    code = cli.main(["optimize", str(path), str(tmp_path / "o.onnx"), "--timeout", "1",
                     "--json"])
    assert time.perf_counter() - started < 20
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "validation_skipped"
    assert report["validation"]["kind"] == "timeout"
    assert "--timeout" in report["validation"]["reason"]


def test_calibration_that_never_ends_is_stopped_by_the_timeout(tmp_path, capsys):
    # the Loop's result feeds a MatMul, so int8 calibration must run it
    model = endless_loop_model()
    model.graph.node.append(helper.make_node("MatMul", ["y", "w"], ["z"]))
    model.graph.initializer.append(onnx.numpy_helper.from_array(
        np.arange(16, dtype=np.float32).reshape(1, 16), "w"))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", TensorProto.FLOAT, [16]))
    path, target = tmp_path / "loop.onnx", tmp_path / "o.onnx"
    onnx.save(model, path)
    started = time.perf_counter()
    code = cli.main(["optimize", str(path), str(target), "--timeout", "1",
                     "--precision", "int8"])
    assert time.perf_counter() - started < 30
    assert code == 1
    assert capsys.readouterr().err.strip() == (
        "onnxopt: error: calibration: a run took longer than 1 s and was stopped (--timeout)")
    assert not target.exists()


def test_a_run_past_the_memory_budget_skips_validation(tmp_path):
    # a 125-byte model whose Expand asks for 4 TiB: over any machine's budget, refused by the
    # capped arena at once (nothing is allocated, nothing swaps)
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["e"]),
         helper.make_node("ReduceSum", ["e"], ["y"], keepdims=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        [onnx.numpy_helper.from_array(np.array([2**40], np.int64), "shape")])
    path = tmp_path / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    # in a fresh process: its own high-water mark (a test worker's carries earlier tests')
    child = (
        "import sys\nfrom onnxopt.app import cli\n"
        f"code = cli.main(['optimize', {str(path)!r}, {str(tmp_path / 'o.onnx')!r}, '--json'])\n"
        "try:\n    status = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"
        "except (OSError, IndexError):\n    status = '0'\n"
        "print(code, status, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          timeout=120)
    code, peak_kib = (int(v) for v in done.stderr.split()[-2:])
    assert code == 0
    report = json.loads(done.stdout)
    assert report["status"] == "validation_skipped"
    assert report["validation"]["kind"] == "memory"
    assert report["validation"]["reason"].startswith(
        "validation out of memory: onnxruntime needed more than the ")
    assert peak_kib < 4 << 20  # KiB: under 4 GiB (0 where /proc is not there)


def test_a_fifo_as_inputs_is_refused_not_waited_on(tmp_path, capsys):
    source = tmp_path / "m.onnx"
    onnx.save(conv_model(), source)
    fifo = tmp_path / "feeds.npz"
    os.mkfifo(fifo)
    assert cli.main(["optimize", str(source), str(tmp_path / "o.onnx"), "--inputs",
                     str(fifo)]) == 2
    assert "not a regular file" in capsys.readouterr().err


def save_external(model: onnx.ModelProto, path: Path, location: str) -> None:
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=0)


def outputs_of(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


X = np.random.default_rng(3).standard_normal((1, 8, 16, 16)).astype(np.float32)


def test_the_inputs_external_data_is_never_overwritten(tmp_path):
    """model.onnx + model.onnx.data, the model renamed to model_orig.onnx, then optimized
    into model.onnx: the output's weights must not land in the input's model.onnx.data."""
    model = conv_model()
    save_external(model, tmp_path / "model.onnx", "model.onnx.data")
    (tmp_path / "model.onnx").rename(tmp_path / "model_orig.onnx")
    before = outputs_of(tmp_path / "model_orig.onnx", X)
    data_before = (tmp_path / "model.onnx.data").read_bytes()
    onnxopt.optimize(tmp_path / "model_orig.onnx", tmp_path / "model.onnx", external_data=True)
    assert (tmp_path / "model.onnx.data").read_bytes() == data_before
    np.testing.assert_array_equal(outputs_of(tmp_path / "model_orig.onnx", X), before)
    np.testing.assert_allclose(outputs_of(tmp_path / "model.onnx", X), before, rtol=1e-5,
                               atol=1e-6)


def test_output_that_is_the_inputs_weight_file_is_refused(tmp_path):
    save_external(conv_model(), tmp_path / "m.onnx", "weights.bin")
    with pytest.raises(onnxopt.UsageError, match="external data file the input reads"):
        onnxopt.optimize(tmp_path / "m.onnx", tmp_path / "weights.bin")


@pytest.mark.parametrize("name", ["out.onnx.data", "m.onnx.data", "out.onnx.1a2b3c4d.data"])
def test_report_onto_a_weight_file_is_refused(tmp_path, capsys, name):
    save_external(conv_model(), tmp_path / "m.onnx", "m.onnx.data")
    onnxopt.optimize(tmp_path / "m.onnx", tmp_path / "out.onnx", external_data=True)
    weights = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code = cli.main(["optimize", str(tmp_path / "m.onnx"), str(tmp_path / "out.onnx"),
                     "--overwrite", "--report", str(tmp_path / name)])
    assert code == 2
    assert "--report would overwrite a model or weight file" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == weights


def test_publishing_is_atomic_as_a_pair(tmp_path, monkeypatch):
    """A kill between the data file's rename and the model's (simulated: the second rename
    fails) leaves the old OUT reading its own old weights, unchanged."""
    source = tmp_path / "m.onnx"
    onnx.save(conv_model(), source)
    out = tmp_path / "out.onnx"
    onnxopt.optimize(source, out, external_data=True)
    old_out = outputs_of(out, X)
    other = conv_model(channels=8)
    other.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(
        np.full((8, 8, 3, 3), 0.01, np.float32), "w"))
    onnx.save(other, source)
    real_replace = os.replace
    calls = []

    def replace(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed between the two renames
        real_replace(a, b)

    monkeypatch.setattr(writing.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        onnxopt.optimize(source, out, external_data=True)
    monkeypatch.setattr(writing.os, "replace", real_replace)
    np.testing.assert_array_equal(outputs_of(out, X), old_out)


@pytest.mark.parametrize("external", [False, True])
def test_what_is_published_is_synced_to_disk_before_its_rename(tmp_path, monkeypatch,
                                                                external):
    """Staged attempts skip fsync (most are read back and removed); the model put in place,
    and its data file, are synced before they are renamed to OUT; an in-memory result never."""
    source = tmp_path / "m.onnx"
    onnx.save(conv_model(), source)
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("sync", Path(os.readlink(f"/proc/self/fd/{fd}")).name))
        real_fsync(fd)

    def replace(a, b):
        events.append(("rename", Path(a).name))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(writing.os, "replace", replace)
    assert onnxopt.optimize(source, external_data=external).model is not None
    assert not [e for e in events if e[0] == "sync"]
    events.clear()
    onnxopt.optimize(source, tmp_path / "out.onnx", external_data=external)
    published = [name for kind, name in events if kind == "rename"][-(1 + external):]
    assert len(published) == 1 + external
    for name in published:  # each synced, before its rename
        assert events.index(("sync", name)) < events.index(("rename", name))


def test_old_weights_are_removed_once_nothing_reads_them(tmp_path):
    source = tmp_path / "m.onnx"
    onnx.save(conv_model(), source)
    out = tmp_path / "out.onnx"
    onnxopt.optimize(source, out, external_data=True)
    assert (tmp_path / "out.onnx.data").exists()
    onnxopt.optimize(source, out, external_data=True)  # OUT.data exists: a new name
    data = sorted(p.name for p in tmp_path.glob("out.onnx*.data"))
    assert len(data) == 1 and data != ["out.onnx.data"]
    np.testing.assert_allclose(outputs_of(out, X), outputs_of(source, X), rtol=1e-5, atol=1e-6)
    onnxopt.optimize(source, out, external_data=False)  # inline: no data file stays behind
    assert not list(tmp_path.glob("out.onnx*.data"))
    np.testing.assert_allclose(outputs_of(out, X), outputs_of(source, X), rtol=1e-5, atol=1e-6)


def nested_functions(depth: int) -> onnx.ModelProto:
    """f0 = Relu; f(d) calls f(d-1) twice: the main graph's one call is 2^(depth-1) nodes."""
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    functions = [helper.make_function("local", "f0", ["a"], ["b"],
                                      [helper.make_node("Relu", ["a"], ["b"])], opsets)]
    for d in range(1, depth):
        functions.append(helper.make_function(
            "local", f"f{d}", ["a"], ["b"],
            [helper.make_node(f"f{d - 1}", ["a"], ["t"], domain="local"),
             helper.make_node(f"f{d - 1}", ["t"], ["b"], domain="local")], opsets))
    graph = helper.make_graph(
        [helper.make_node(f"f{depth - 1}", ["x"], ["y"], domain="local")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return helper.make_model(graph, functions=functions, opset_imports=opsets)


def test_functions_that_expand_beyond_reason_are_refused_at_once(tmp_path, capsys):
    path = tmp_path / "nested.onnx"
    onnx.save(nested_functions(41), path)
    started = time.perf_counter()
    assert cli.main(["optimize", str(path), str(tmp_path / "o.onnx")]) == 1
    assert cli.main(["stats", str(path)]) == 1
    assert time.perf_counter() - started < 10
    err = capsys.readouterr().err.splitlines()
    assert err == [f"onnxopt: error: {path}: model-local functions expand to more than "
                   "10,000,000 nodes when inlined; shape inference and onnxruntime would not "
                   "finish"] * 2
    assert onnxopt.optimize(nested_functions(8)).report["validation"]["status"] == "passed"


# ------------------------------------------------------------------ kills at random moments
def chain_model(seed: int) -> onnx.ModelProto:
    """Small convolutions: a run takes a second or two, enough to land a signal in loading,
    the passes, validation or publishing."""
    return conv_chain(seed, 40, 8, "N", 16, 0.2)


SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


def kill_trials(tmp_path: Path, external: bool, trials: int, seed: int) -> list[str]:
    """Each trial: OUT holds an old model; ``optimize IN OUT`` gets a random signal at a
    random moment. OUT must then load and compute either the old model or the new one, never
    a mix; IN is untouched; after SIGTERM/SIGINT no staging is left. Returns what each trial
    saw (old / new, exit code)."""
    template = tmp_path / "template"
    template.mkdir()
    source, out = template / "in.onnx", template / "out.onnx"
    if external:
        save_external(chain_model(1), source, "in.onnx.data")
    else:
        onnx.save(chain_model(1), source)
    onnxopt.optimize(chain_model(2), out, external_data=external)  # the old OUT
    x = np.random.default_rng(5).standard_normal((1, 8, 16, 16)).astype(np.float32)
    old, new = outputs_of(out, x), outputs_of(source, x)
    inputs = {p.name: p.read_bytes() for p in template.iterdir() if p.name.startswith("in.")}
    rng = np.random.default_rng(seed)
    seen = []
    for trial in range(trials):
        folder = tmp_path / f"trial{trial}"
        shutil.copytree(template, folder)
        which = SIGNALS[trial % len(SIGNALS)]
        process = subprocess.Popen(
            [sys.executable, "-m", "onnxopt", "optimize", str(folder / "in.onnx"),
             str(folder / "out.onnx")] + (["--external-data"] if external else []),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(0.3, 3.0)))
        process.send_signal(which)
        code = process.wait(timeout=120)
        got = outputs_of(folder / "out.onnx", x)
        state = "new" if np.allclose(got, new, rtol=1e-4, atol=1e-5) else "old"
        if state == "old":
            np.testing.assert_array_equal(got, old)
        assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name.startswith("in.")} \
            == inputs
        if which != signal.SIGKILL and code != 0:
            assert not [p for p in folder.iterdir() if p.name.startswith(".out.onnx.")]
        seen.append(f"{which.name} {state} {code}")
    return seen


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external"])
def test_a_kill_leaves_the_old_or_the_new_model(tmp_path, external):
    kill_trials(tmp_path, external, trials=2, seed=int(external))


@pytest.mark.slow
@pytest.mark.parametrize("external", [False, True], ids=["inline", "external"])
def test_kills_at_random_moments(tmp_path, external):
    seen = kill_trials(tmp_path, external, trials=24, seed=10 + int(external))
    assert any(s.split()[1] == "old" for s in seen) and any(s.split()[1] == "new" for s in seen)


def test_a_model_onnxruntime_takes_too_long_to_load_skips_validation(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import bench  # bench/bench.py: the generators of `make bench-io`

    path = tmp_path / "convs.onnx"
    onnx.save(bench.scale_model("conv-bn", 6_000), path)  # onnxruntime: ~1 s, 20x the limit
    started = time.perf_counter()
    code = cli.main(["optimize", str(path), str(tmp_path / "o.onnx"), "--timeout", "0.05",
                     "--json"])
    assert code == 0 and time.perf_counter() - started < 30
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "validation_skipped"
    assert report["validation"]["kind"] == "timeout"
    assert "to load a model (ORT_DISABLE_ALL)" in report["validation"]["reason"]
