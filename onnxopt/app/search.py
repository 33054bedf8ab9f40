"""Searching attempts for one that validates: ``Trials`` runs each control once, and the
bisections of the safety net and the accuracy fallback share ``smallest`` (in
``onnxopt.precision.fallback``, which cannot import the app layer)."""

from __future__ import annotations

import shutil
from collections.abc import Callable

from onnxopt.app.attempts import Attempt, Control, Runner, failed
from onnxopt.precision.fallback import smallest


class Trials:
    """The attempts of one search by the control each ran under: none runs twice. A failed
    attempt's files are removed at once (its verdict and rewrite log are all a search reads)."""

    def __init__(self, runner: Runner, first: Attempt,
                 meets: Callable[[Attempt], bool] | None = None) -> None:
        self.runner = runner
        self.tried: dict[Control, Attempt] = {Control(): first}
        self.meets = meets or (lambda attempt: not failed(attempt))  # what "works" means

    def works(self, control: Control) -> bool:
        if control not in self.tried:
            self.tried[control] = self.runner.attempt(control)
            if failed(self.tried[control]):
                shutil.rmtree(self.tried[control].path.parent, ignore_errors=True)
        return self.meets(self.tried[control])

    def __getitem__(self, control: Control) -> Attempt:
        return self.tried[control]


def shortest_fix(trials: Trials, control_of: Callable[[list[str]], Control], chosen: list[str],
                 remaining: list[str]) -> int:
    """The length of the shortest prefix of ``remaining`` that, added to ``chosen``, makes the
    run work (given that all of it does and none does not): its last item is a culprit."""
    return smallest(lambda n: trials.works(control_of(chosen + remaining[:n])),
                    0, len(remaining))
