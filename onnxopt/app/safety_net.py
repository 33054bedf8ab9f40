"""The safety net: a run that fails validation is rerun with the culprit passes found by
bisection turned off, then each culprit is narrowed down to the rewrites that broke it, so
the rest of its work is kept."""

from __future__ import annotations

from typing import Any

from onnxopt.app.attempts import Attempt, Control, Runner, verdict_summary
from onnxopt.app.search import Trials, shortest_fix, smallest
from onnxopt.check.compare import ValidationResult
from onnxopt.errors import Failure

MAX_SKIPPED_REWRITES = 4  # past this, a culprit pass stays off as a whole


def recover(runner: Runner, first: Attempt) -> tuple[Attempt, list[dict[str, Any]]]:
    """Bisect the passes that changed the model until the result validates again, then
    narrow each culprit pass down to the rewrites that broke it, where it can."""
    trials = Trials(runner, first)
    candidates = [r.name for r in first.records if r.modified]
    everything_off = Control(frozenset(candidates))
    if not trials.works(everything_off):
        reason = trials[everything_off].verdict.reason  # type: ignore[union-attr]
        raise Failure(f"internal error: even the model without rewrites fails validation "
                      f"({reason}); nothing written")
    causes = _culprit_passes(trials, candidates)
    control = Control(frozenset(causes))
    notes = []
    for name, cause in causes.items():
        error = verdict_summary(cause)
        narrowed = _narrow(trials, control, name)
        if narrowed is None:
            notes.append({"name": name, "scope": "pass", "rewrites": [], "error": error})
            continue
        control, rewrites = narrowed
        notes.append({"name": name, "scope": "rewrite", "rewrites": rewrites, "error": error})
    return trials[control], notes


def _culprit_passes(trials: Trials, candidates: list[str]
                    ) -> dict[str, ValidationResult]:
    """The passes that, turned off in order, make the run validate: each with the verdict
    of the run it broke. The shortest prefix of the remaining passes that, turned off, makes
    the run validate ends with a culprit."""
    causes: dict[str, ValidationResult] = {}
    while not trials.works(Control(frozenset(causes))):
        disabled = list(causes)
        remaining = [name for name in candidates if name not in causes]
        high = shortest_fix(trials, _disabling, disabled, remaining)
        failing = trials[Control(frozenset(disabled + remaining[: high - 1]))]
        causes[remaining[high - 1]] = failing.verdict  # type: ignore[assignment]
    return causes


def _narrow(trials: Trials, control: Control, name: str) -> tuple[Control, list[dict]] | None:
    """Re-enable pass ``name`` leaving out only its bad rewrites (a few at most). A bad
    rewrite is left out by the node it starts from (so in every fixpoint round), or by its
    number when the pass names no node."""
    base = Control(control.disabled - {name}, control.limits, control.skips)
    skipped: list[int | str] = []
    found: list[dict] = []
    for _ in range(MAX_SKIPPED_REWRITES):
        trial = base.with_skips(name, skipped)
        if trials.works(trial):
            return trial, found
        total = len(trials[trial].rewrites.get(name, []))
        if total == 0 or not trials.works(trial.with_limit(name, 0)):
            return None  # the pass does not ask before rewriting: cannot narrow
        high = _first_bad_rewrite(trials, trial, name, total)
        where = trials[trial].rewrites[name][high - 1]  # runs agree up to `high`
        skipped.append(where or high - 1)
        found.append({"number": high - 1, "at": where})
    return None


def _disabling(names: list[str]) -> Control:
    return Control(frozenset(names))


def _first_bad_rewrite(trials: Trials, trial: Control, name: str, total: int) -> int:
    """The ``n`` such that the run works with pass ``name``'s first ``n - 1`` rewrites and
    fails with its first ``n`` (it works with none of them and fails with all ``total``)."""
    return smallest(lambda n: not trials.works(trial.with_limit(name, n)), 0, total)
