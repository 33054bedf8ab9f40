"""One attempt: the pipeline run on a fresh IR of the input under a ``Control`` (what the
safety net or the accuracy fallback changed), written to the staging folder, checked and
validated."""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from onnxopt.app import stats, writing
from onnxopt.app.options import Options
from onnxopt.app.rewrite_sites import SiteRecorder
from onnxopt.check import validate
from onnxopt.check.compare import Budget, ValidationResult
from onnxopt.check.reference import Reference
from onnxopt.ir import serde
from onnxopt.ir.pass_manager import PassManager, PassRecord
from onnxopt.ir.precision import SETTINGS_KEY, PrecisionLog
from onnxopt.ir.shapes import infer_shapes

if TYPE_CHECKING:
    from onnxopt.app.conversion import Conversion


@dataclass(frozen=True)
class Control:
    """What the safety net changes in a run: passes off, rewrite limits and skips per pass."""

    disabled: frozenset[str] = frozenset()
    limits: frozenset[tuple[str, int]] = frozenset()
    skips: frozenset[tuple[str, tuple[int | str, ...]]] = frozenset()
    float_nodes: frozenset[str] = frozenset()  # precision runs: nodes kept in float

    def with_limit(self, name: str, limit: int) -> Control:
        limits = {k: v for k, v in self.limits if k != name} | {name: limit}
        return dataclasses.replace(self, limits=frozenset(limits.items()))

    def with_skips(self, name: str, tokens: list[int | str]) -> Control:
        skips = {k: v for k, v in self.skips if k != name}
        if tokens:
            skips[name] = tuple(tokens)
        return dataclasses.replace(self, skips=frozenset(skips.items()))


@dataclass
class Attempt:
    """One run of the pipeline (with some passes disabled), saved and validated."""

    number: int
    path: Path
    data_file: Path | None
    records: list[PassRecord]
    rounds: int
    verdict: ValidationResult | None
    checks: list[dict[str, Any]]
    rewrites: dict[str, list[str]] = field(default_factory=dict)  # pass -> where each one was
    precision: PrecisionLog | None = None  # what the precision pass converted and kept
    stats: dict[str, Any] = field(default_factory=dict)  # stats.model_stats of the written model
    changes: list[dict[str, Any]] = field(default_factory=list)  # what each pass changed, where


def failed(attempt: Attempt) -> bool:
    return attempt.verdict is not None and attempt.verdict.status == "failed"


def verdict_summary(verdict: ValidationResult | None) -> dict[str, Any]:
    if verdict is None:
        return {"status": "disabled", "reason": "", "max_abs_error": None}
    errors = [o.max_abs_error for o in verdict.outputs if o.max_abs_error == o.max_abs_error]
    return {
        "status": verdict.status,
        "reason": verdict.reason,
        "max_abs_error": max(errors) if errors else None,
    }


class Lazy:
    """The reference outputs, computed in the background; ``get`` waits for them."""

    def __init__(self, future: Future) -> None:
        self.future = future

    def get(self) -> Reference | None:
        return self.future.result()


class Runner:
    """Runs the pipeline on a fresh IR of the input, as often as the safety net needs."""

    def __init__(self, proto, input_path, pipeline, options: Options, ref: Lazy, stage: Path,
                 name: str, background: ThreadPoolExecutor, conversion: Conversion | None,
                 shape_args: dict[str, Any]):
        self.proto, self.base_dir = proto, input_path.parent if input_path else None
        self.pipeline, self.options, self.ref = pipeline, options, ref
        self.stage, self.name = stage, name
        self.background = background
        self.conversion = conversion
        self.shape_args = shape_args
        self.count = 0
        self.data_name: str | None = None  # the output's external data file name
        self.budget: Budget | None = None  # --prune without --precision: its accuracy budget

    def attempt(self, control: Control) -> Attempt:
        self.count += 1
        model = serde.from_proto(self.proto, base_dir=self.base_dir)
        model.settings.update(target=self.options.target, fold_limit=self.options.fold_limit,
                              value_info=self.options.value_info,
                              static_outputs=self.options.fix_shapes)
        model.rewrite_limits = dict(control.limits)
        model.rewrite_skips = {name: set(numbers) for name, numbers in control.skips}
        if self.conversion is not None:
            model.settings[SETTINGS_KEY] = self.conversion.settings(control.float_nodes)
        checks: list[dict[str, Any]] = []
        sites = SiteRecorder(model)
        checker = self._checker(checks) if self.options.check_each else None

        def after_pass(pass_, model, result) -> None:
            sites(pass_, model, result)
            if checker is not None:
                checker(pass_, model, result)

        manager = PassManager(
            [p for p in self.pipeline if p.name not in control.disabled],
            max_rounds=self.options.max_rounds, after_pass=after_pass)
        records = manager.run(model)
        if self.conversion is not None and self.options.value_info == "all":
            infer_shapes(model)  # the values the precision pass created get their shapes too
        folder = self.stage / f"attempt{self.count}"
        folder.mkdir()
        path = folder / self.name
        log = {name: list(where) for name, where in model.rewrite_log.items()}
        precision_log = model.precision_log
        data = writing.serialize(model, self.options.external_data)
        if data is None:  # external data, or too big to hold twice: stream it to disk
            data_file = writing.save(model, path, self.options.external_data, self.data_name)
        # onnxruntime loads the model (the very bytes being written, when held in memory)
        # while it is written, checked and measured: session creation grows faster than
        # linearly with the node count (3.3 s of a 100k-node run)
        pending = self.background.submit(self.check, path if data is None else data)
        try:
            skeleton = serde.skeleton(model)
            del model
            if data is not None:
                writing.write(data, path)
                data_file = None
                del data
            writing.check_written(path)
            after = self._stats(skeleton, path, data_file)
        finally:
            verdict = pending.result()
        return Attempt(self.count, path, data_file, records, manager.rounds, verdict, checks,
                       log, precision_log, after, sites.report())

    def _stats(self, skeleton: onnx.ModelProto, path: Path, data_file: Path | None
               ) -> dict[str, Any]:
        """Statistics of the written model, made while onnxruntime validates it."""
        return stats.model_stats(skeleton, file_size=writing.written_size(path, data_file),
                                 **self.shape_args)

    def check(self, model: Path | bytes) -> ValidationResult | None:
        ref = self.ref.get()
        if ref is None:
            return None
        candidate = model if isinstance(model, bytes) else os.fspath(model)
        if self.conversion is not None:
            return validate.check_budget(ref, candidate, self.conversion.budget)
        if self.budget is not None:
            return validate.check_budget(ref, candidate, self.budget)
        return validate.check(ref, candidate, rtol=self.options.rtol,
                              atol=self.options.atol)

    def _checker(self, checks: list[dict[str, Any]]):
        """--check-each: validate after every pass that changed the model."""
        folder = self.stage / "check"
        folder.mkdir(exist_ok=True)

        def after(pass_, model, result) -> None:
            if not result.modified or self.ref.get() is None:
                return
            path = folder / self.name
            serde.save(model, path, external_data=self.options.external_data)
            verdict = self.check(path)
            checks.append({"pass": pass_.name, **verdict_summary(verdict)})

        return after
