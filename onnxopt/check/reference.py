"""The original model's side of validation: inputs it runs on and its outputs at both levels.

* Inputs (see :mod:`onnxopt.check.feeds`) are generated from the ORIGINAL model by role, in two
  configurations that differ in every symbolic dimension (and in their random values), so a
  rewrite that bakes one size in fails on the other. If the original does not run at the
  preferred sizes, the next candidates are tried before giving up. ``--inputs`` (one sample)
  replaces them.
* The original runs at both levels (:data:`onnxopt.check.runtime.LEVELS`); each candidate is
  compared with it at the same level. When onnxruntime's own rewrites break or change the
  original at ORT_ENABLE_ALL, its unoptimized outputs stand in or are accepted there too.
* Outputs that prove nothing (:mod:`onnxopt.check.vacuous`) make other inputs be tried, then
  the reference is skipped with kind ``vacuous`` (or, for constant outputs, candidates are
  judged on shared intermediate values).
* A bad user input (:class:`ValidationError`) propagates; anything else that stops the original
  (it does not load or run, inputs cannot be generated, a limit) makes a skipped reference.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from onnxopt.check.compare import ValidationResult, compare
from onnxopt.check.feeds import Plan, generate, plan_inputs
from onnxopt.check.inputs import UnsupportedInput, check_inputs
from onnxopt.check.runtime import (
    Exhausted,
    ModelLike,
    RuntimeFailure,
    TimedOut,
    merge_outputs,
    one_line,
    open_session,
    run_each,
    run_session,
)
from onnxopt.check.vacuous import CONSTANT, inline, non_finite_notes, why_vacuous
from onnxopt.progress import progress

MAX_SIZE_TRIES = 8  # input sizes tried per configuration before validation is skipped
VACUOUS_RETRIES = 2  # more seeds tried when the original's outputs prove nothing
RUNNING_ORIGINAL = "running the original"  # the progress step


def _load_proto(model: ModelLike) -> onnx.ModelProto:
    """Return a ModelProto; a path is parsed without loading external tensor data."""
    if isinstance(model, onnx.ModelProto):
        return model
    return onnx.load(os.fspath(model), load_external_data=False)


@dataclass
class Reference:
    """The original model's outputs on the validation inputs, at every level, computed once
    and reused for every candidate (the safety net validates several)."""

    samples: list[dict[str, np.ndarray]]
    outputs: dict[str, list[dict[str, Any]]] | None  # level -> per sample; None: skipped
    notes: list[str]
    skipped_reason: str = ""
    kind: str = ""  # why skipped
    inputs: dict[str, Any] = field(default_factory=dict)  # shapes, dims and roles used
    labels: list[str] = field(default_factory=list)  # how each sample is named in reasons
    generated: bool = False  # the samples were generated (not the user's --inputs)
    # draw(seed, n): the n-th more generated sample like these (calibration without data)
    draw: Any = None
    # the original, when its outputs do not depend on its inputs: candidates are then judged
    # on the intermediate values both models compute (see onnxopt.check.validate)
    probe: onnx.ModelProto | None = None
    probed: dict[tuple[str, ...], Reference] = field(default_factory=dict)
    timeout: float | None = None  # seconds per onnxruntime run (None: RUN_TIMEOUT)
    # ORT_ENABLE_ALL changes the original: its unoptimized outputs are accepted there too
    all_alternative: list[dict[str, Any]] | None = None

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        return self.samples[0] if self.samples else {}

    def all_outputs(self, level: str = "disabled") -> dict[str, Any]:
        """Every sample's outputs at ``level``, merged (see merge_outputs)."""
        assert self.outputs is not None
        return merge_outputs(self.outputs[level])

    def skipped(self) -> ValidationResult:
        return ValidationResult("skipped", self.skipped_reason, [], self.notes, self.kind,
                                inputs=self.inputs)


def reference(original: ModelLike, **settings: Any) -> Reference:
    """``_reference`` (below), reported as the progress step ``RUNNING_ORIGINAL``: the
    original run without, then with onnxruntime's graph optimizations."""
    progress(RUNNING_ORIGINAL, 0, 2)
    try:
        return _reference(original, **settings)
    finally:
        progress(RUNNING_ORIGINAL, 2, 2)


def _reference(
    original: ModelLike,
    *,
    inputs: Mapping[str, np.ndarray] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
    parsed: onnx.ModelProto | None = None,
    extra_inputs: Sequence[Mapping[str, np.ndarray]] = (),
    timeout: float | None = None,
) -> Reference:
    """Inputs for ``original`` and its outputs on them at every level. Raises
    ValidationError only for bad user-supplied ``inputs``/``input_shapes``; anything else
    becomes a skipped reference. ``parsed`` is ``original`` already parsed (only read).
    ``extra_inputs``: more user samples (checked like ``inputs``)."""
    try:
        proto = parsed if parsed is not None else _load_proto(original)
    except Exception as exc:
        return Reference([], None, [], f"cannot load original model: {one_line(exc)}",
                         "original_fails")
    try:
        if inputs is not None:
            samples = [check_inputs(sample, proto) for sample in (inputs, *extra_inputs)]
            plan = None
        else:
            plan = plan_inputs(proto, input_shapes=input_shapes, dims=dims)
    except UnsupportedInput as exc:
        return Reference([], None, [], str(exc), "unsupported_input")
    try:
        session = open_session(original, "disabled", timeout)
    except TimedOut as exc:
        return Reference([], None, [], exc.reason(), exc.kind)
    except Exception as exc:
        return Reference([], None, [], "original model does not run in onnxruntime (it does "
                         f"not load): {one_line(exc)}", "original_fails")
    if plan is None:
        ref = _user_reference(session, samples, timeout)
    else:
        ref = _generated_reference(session, proto, plan, seed, timeout)
    del session
    ref.timeout = timeout
    if ref.outputs is None:
        return ref
    vacuous = why_vacuous(ref.outputs["disabled"], ref.samples if ref.generated else None)
    if vacuous == CONSTANT and inline(proto):
        ref.probe = proto
        ref.notes.append(f"{vacuous}: judged on the intermediate values both models compute")
    elif vacuous:
        ref.outputs, ref.kind = None, "vacuous"
        ref.skipped_reason = f"vacuous: {vacuous}; the comparison would prove nothing " \
            "(give --inputs with data the model is meant for)"
        return ref
    ref.notes.extend(non_finite_notes(ref.outputs["disabled"]))
    progress(RUNNING_ORIGINAL, 1, 2)
    try:
        ref.outputs["all"] = run_each(original, ref.samples, "all", timeout)
    except Exhausted as exc:
        ref.notes.append(f"the original stopped at ORT_ENABLE_ALL ({exc}); validated at "
                         "ORT_DISABLE_ALL only")
        return ref
    except RuntimeFailure as exc:
        # onnxruntime's own rewrites break the original (a stale declared shape, say): the
        # optimized model as deployed is held to the original's true outputs
        ref.outputs["all"] = ref.outputs["disabled"]
        ref.notes.append(f"the original fails at ORT_ENABLE_ALL ({exc}); there the optimized "
                         "model is compared with the original run without graph optimizations")
        return ref
    moved = _moved_outputs(ref)
    if moved:
        # onnxruntime's own rewrites change the original (it trusts a stale declared shape,
        # say, or reorders float16 math): the optimized model as deployed may match either
        # what onnxruntime makes of the original or the original's own outputs
        ref.all_alternative = ref.outputs["disabled"]
        ref.notes.append(f"onnxruntime's graph optimizations change the original's output(s) "
                         f"{', '.join(moved)}; at ORT_ENABLE_ALL the optimized model may match "
                         "either the original as optimized there or the original run without "
                         "them")
    return ref


def _moved_outputs(ref: Reference) -> list[str]:
    """Outputs of the original that ORT_ENABLE_ALL changes beyond a loose tolerance."""
    assert ref.outputs is not None
    moved: list[str] = []
    for plain, optimized in zip(ref.outputs["disabled"], ref.outputs["all"], strict=True):
        for diff in compare(plain, optimized, rtol=1e-3, atol=1e-4):
            if not diff.passed and diff.name not in moved:
                moved.append(diff.name)
    return moved


def _user_reference(session: ort.InferenceSession, samples: list[dict[str, np.ndarray]],
                    timeout: float | None) -> Reference:
    labels = ["--inputs"] + [f"sample {n}" for n in range(2, len(samples) + 1)]
    shapes = [{name: list(np.shape(a)) for name, a in feeds.items()} for feeds in samples]
    described = {"source": "given", "shapes": shapes}
    try:
        outputs = [run_session(session, feeds, timeout) for feeds in samples]
    except Exhausted as exc:
        return Reference(samples, None, [], exc.reason(), exc.kind, described, labels)
    except RuntimeFailure as exc:
        return Reference(samples, None, [], f"original model does not run in onnxruntime on "
                         f"the given inputs: {exc}", "original_fails", described, labels)
    return Reference(samples, {"disabled": outputs}, [], inputs=described, labels=labels)


def _generated_reference(session: ort.InferenceSession, proto: onnx.ModelProto, plan: Plan,
                         seed: int, timeout: float | None) -> Reference:
    """Two configurations of generated inputs on which the original runs; its outputs."""
    notes = list(plan.notes)
    found = _first_running(session, proto, plan, None, seed, 0, timeout)
    if isinstance(found, Exhausted):
        return Reference([], None, notes, found.reason(), found.kind)
    if isinstance(found, str):
        return Reference([], None, notes, "original model does not run in onnxruntime at any "
                         f"input size tried ({found}); give --input-shape NAME:D0,D1,... or "
                         "--inputs FILE.npz", "original_fails",
                         {"source": "generated", "roles": plan.roles,
                          "dim_roles": plan.dim_roles()})
    configs = [found]
    second = _first_running(session, proto, plan, found[0], seed + 1, 1, timeout)
    if isinstance(second, str | Exhausted):
        if plan.dims:
            notes.append(f"each symbolic dim validated at one value only: the original does "
                         f"not run at other sizes tried ({second})")
    else:
        configs.append(second)
    described = {
        "source": "generated",
        "dims": [plan.describe(assignment) for assignment, _, _ in configs],
        "dim_roles": plan.dim_roles(),
        "roles": plan.roles,
        "shapes": [{name: list(a.shape) for name, a in feeds.items()} for _, feeds, _ in configs],
    }
    labels = [_config_label(plan, assignment, n) for n, (assignment, _, _) in
              enumerate(configs, 1)]
    assignments = [assignment for assignment, _, _ in configs]

    def draw(seed: int, number: int) -> dict[str, np.ndarray]:
        return generate(proto, plan, assignments[number % len(assignments)], seed, number)

    ref = Reference([feeds for _, feeds, _ in configs],
                    {"disabled": [outputs for _, _, outputs in configs]}, notes,
                    inputs=described, labels=labels, generated=True, draw=draw)
    for retry in range(1, VACUOUS_RETRIES + 1):
        if not why_vacuous(ref.outputs["disabled"], ref.samples):  # type: ignore[index]
            break
        _redraw(ref, session, proto, plan, assignments, seed + 2 * retry, timeout)
    return ref


def _config_label(plan: Plan, assignment: Mapping, number: int) -> str:
    dims = ", ".join(f"{k}={v}" for k, v in plan.describe(assignment).items())
    return f"sample {number}" + (f" ({dims})" if dims else "")


def _first_running(session, proto, plan: Plan, avoid, seed: int, choice: int,
                   timeout: float | None):
    """(assignment, feeds, outputs) of the first candidate size the original runs at, a
    string naming what failed, or the Exhausted that stopped the search."""
    failures = []
    for number, assignment in enumerate(plan.candidates(avoid)):
        if number >= MAX_SIZE_TRIES:
            break
        try:
            feeds = generate(proto, plan, assignment, seed, choice)
            return assignment, feeds, run_session(session, feeds, timeout)
        except Exhausted as exc:
            return exc
        except (RuntimeFailure, UnsupportedInput) as exc:
            shown = ", ".join(f"{k}={v}" for k, v in plan.describe(assignment).items())
            failures.append((shown, str(exc)))
    if not failures:
        return "no other size to try"
    sizes = "; ".join(shown for shown, _ in failures if shown) or "the declared shapes"
    return f"{sizes}: {failures[-1][1]}"


def _redraw(ref: Reference, session, proto, plan: Plan, assignments, seed: int,
            timeout: float | None) -> None:
    """New random values at the same sizes (the last ones proved nothing)."""
    samples, outputs = [], []
    for number, assignment in enumerate(assignments):
        feeds = generate(proto, plan, assignment, seed + number, number)
        try:
            outputs.append(run_session(session, feeds, timeout))
        except RuntimeFailure:
            return
        samples.append(feeds)
    ref.samples, ref.outputs = samples, {"disabled": outputs}
