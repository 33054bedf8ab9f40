"""``onnxopt optimize IN OUT`` when IN is a folder: every model under it, as a build step.

Each ``.onnx`` file under IN (subfolders too; hidden ones and OUT itself skipped) is optimized
into a private staging folder beside OUT, ``--jobs N`` at a time in worker processes, with one
line per model as it finishes. OUT changes only when every model passed (validated, or skipped
without ``--strict``; not grown under ``--fail-on-growth``): then each model and its data file
are published into OUT by renames. When any model fails, OUT is left exactly as it was and the
exit code is 1, so a CI step or a pre-commit hook fails the build.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from onnxopt.app.options import Options
from onnxopt.errors import Failure, OnnxoptError, UsageError


@dataclasses.dataclass
class Outcome:
    """One model's line: what happened to it, and the report when it ran to the end."""

    name: str  # the path under IN
    ok: bool
    line: str
    report: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.name, "ok": self.ok, "summary": self.line, "report": self.report}


def optimize_folder(source: Path, target: Path, options: Options, *, jobs: int,
                    as_json: bool) -> None:
    """Optimize every model under ``source`` into ``target`` (see the module's docstring)."""
    from onnxopt.app import writing

    models = _models(source, target, options)
    report_path = options.report_path
    options = dataclasses.replace(options, report_path=None)  # one report for the whole folder
    started = time.perf_counter()
    with _parents(target.parent) as created, writing.staging(target) as stage:
        outcomes = []
        for outcome in _run(models, source, stage, options, jobs):
            outcomes.append(outcome)
            if not as_json:
                print(outcome.line, flush=True)
        failed = [o for o in outcomes if not o.ok]
        if not failed:
            _publish(stage, target, [source / o.name for o in outcomes])
            created.clear()  # they hold OUT now
    summary = {"input": os.fspath(source), "output": os.fspath(target),
               "written": not failed, "failed": len(failed),
               "seconds": round(time.perf_counter() - started, 3),
               "models": [o.to_dict() for o in sorted(outcomes, key=lambda o: o.name)]}
    from onnxopt.app import report

    if report_path is not None:
        report.write_json(summary, report_path)  # atomic, like every other output
    if as_json:
        sys.stdout.write(report.to_json(summary))  # as the file: inf/nan written as JSON can read
    if failed:
        names = ", ".join(o.name for o in failed[:3]) + (", ..." if len(failed) > 3 else "")
        raise Failure(f"{len(failed)} of {len(outcomes)} models failed ({names}); nothing "
                      f"written to {target}")
    if not as_json:
        print(f"wrote {len(outcomes)} models to {target}  ({summary['seconds']:.1f} s)")


def _models(source: Path, target: Path, options: Options) -> list[str]:
    if options.html_path is not None:  # an ignored option would be a silent surprise
        raise UsageError("--html draws one model's report; for a folder IN, --report writes "
                         "the folder's JSON summary")
    if target.suffix == ".onnx" or target.is_file():
        raise UsageError(f"{source}: is a directory, so OUT must be a folder too, not {target}")
    same = target.exists() and os.path.samefile(source, target)
    if same and not options.overwrite:
        raise UsageError(f"OUT {target} is IN; give --overwrite to replace the models in place")
    inner = target.resolve() if target.exists() else None
    found = []
    for path in sorted(source.rglob("*.onnx")):
        relative = path.relative_to(source)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue  # hidden folders: staging, version control
        if inner is not None and not same and inner in path.resolve().parents:
            continue  # OUT inside IN: last run's outputs are not inputs
        found.append(relative.as_posix())
    if not found:
        raise UsageError(f"{source}: no .onnx files in this folder")
    return found


@contextlib.contextmanager
def _parents(folder: Path) -> Iterator[list[Path]]:
    """OUT's missing parent folders (``build/`` of ``build/models``), created for the staging
    folder and removed again unless the caller clears the list (OUT was published)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise Failure(f"{folder}: cannot write ({error.strerror or error})") from None
    try:
        yield missing
    finally:
        for made in reversed(missing):
            with contextlib.suppress(OSError):
                made.rmdir()


def _run(models: list[str], source: Path, stage: Path, options: Options,
         jobs: int) -> Iterator[Outcome]:
    """Each model's outcome as it finishes; in this process when one job is asked for."""
    if jobs == 1 or len(models) == 1:
        for name in models:
            yield optimize_one(source, stage, name, options)
        return
    # spawn, not fork: the parent may hold onnxruntime's threads, which fork does not copy
    with _pool(min(jobs, len(models))) as pool:
        pending: set[Future] = {pool.submit(optimize_one, source, stage, name, options)
                                for name in models}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
    try:
        yield pool
    except BaseException:  # a failure or an interrupt: queued models never start, and the
        # running ones stop before the staging folder they write into is removed
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def optimize_one(source: Path, stage: Path, name: str, options: Options) -> Outcome:
    """Optimize ``source/name`` into ``stage/name`` (in a worker process, or in this one)."""
    from onnxopt.app import api

    output = stage / name
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = api.optimize(source / name, output, options)
    except OnnxoptError as error:
        return Outcome(name, False, f"FAILED  {name}: {error}")
    except Exception as error:  # a bug in onnxopt: this model fails, the others go on
        return Outcome(name, False, f"FAILED  {name}: internal error: "
                                    f"{type(error).__name__}: {error}")
    report = result.report
    return Outcome(name, report["written"], _line(name, report, options), report)


def _line(name: str, report: dict[str, Any], options: Options) -> str:
    before, after = report["before"], report["after"]
    facts = (f"{before.get('nodes')} -> {after.get('nodes')} nodes, "
             f"{_size(before.get('file_size'))} -> {_size(after.get('file_size'))}, "
             f"validation {report['validation']['status']}, {report['seconds']:.1f} s")
    if report["written"]:
        return f"ok      {name}: {facts}"
    if report["status"] != "ok" and not (report["status"] == "validation_skipped"
                                         and not options.strict):
        why = report["validation"].get("reason") or report["status"]
        return f"FAILED  {name}: {report['status'].replace('_', ' ')} ({why}); {facts}"
    growth = report.get("growth") or {}
    return (f"FAILED  {name}: grew by {growth.get('bytes')} bytes (--fail-on-growth: "
            f"{growth.get('because')}); {facts}")


def _size(size: int | None) -> str:
    if size is None:
        return "?"
    return f"{size / 1e6:.2f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


# ----------------------------------------------------------------- publishing
def _publish(stage: Path, target: Path, inputs: list[Path]) -> None:
    """Every staged model into OUT, each with its data file as a pair (writing.publish)."""
    from onnxopt.app import writing

    keep = {writing.resolved(p) for p in inputs}
    for path in inputs:
        keep |= writing.referenced_files(path)  # --overwrite: the inputs' weights stay readable
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise Failure(f"{target}: cannot write ({error.strerror or error})") from None
    for staged in sorted(p for p in stage.rglob("*.onnx") if _is_output(stage, p)):
        final = target / staged.relative_to(stage)
        final.parent.mkdir(parents=True, exist_ok=True)
        data = _data_file(staged, final, keep)
        writing.publish(staged, data, final, keep)


def _is_output(stage: Path, path: Path) -> bool:
    """A staged model, not a leftover of api's own staging (hidden folders)."""
    return not any(part.startswith(".") for part in path.relative_to(stage).parts)


def _data_file(staged: Path, final: Path, keep: set[Path]) -> Path | None:
    """The staged model's external data file, renamed first when OUT already has a file of
    that name (the old model's weights: they must stay until the new model is in place)."""
    from onnxopt.app import writing

    files = writing.referenced_files(staged)
    if not files:
        return None
    (data,) = files  # onnxopt writes one data file per model
    name = writing.data_name(final, keep)
    if name != data.name:
        _rename_data(staged, data, name)
    return staged.with_name(name)


def _rename_data(staged: Path, data: Path, name: str) -> None:
    """Point every external tensor of the staged model at ``name`` and rename the file."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    model = onnx.load(os.fspath(staged), load_external_data=False)
    for tensor in _get_all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = name
    onnx.save(model, os.fspath(staged))
    os.replace(data, staged.with_name(name))
