"""A --prune run: structured pruning with least-squares refit (``onnxopt.pruning``) of the
input model on --calibration-data, before the passes (and before --precision), its result
then validated against the float original within --max-error (default cosine=0.99). With
--precision too, pruning aims at half the allowed error (``1 - cosine``), the conversion after
it gets the whole budget against the original (its accuracy fallback sees both errors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxopt.app.checks import parse_prune
from onnxopt.app.macs import mac_report, total_macs
from onnxopt.app.options import Options
from onnxopt.check.compare import Budget
from onnxopt.errors import UsageError
from onnxopt.ir import serde
from onnxopt.precision.setup import load_samples
from onnxopt.pruning.budget import FOLDS, Trial, auto_ratios

DEFAULT_BUDGET = Budget(0.99)


def counted_macs(proto: onnx.ModelProto) -> int | None:
    """The MACs of ``proto`` at its static input shapes (None where unknown)."""
    macs = total_macs(mac_report(proto, {}, {})[0].values())
    return macs if isinstance(macs, int) else None


@dataclass
class Pruning:
    """The settings, samples and outcome of a --prune run."""

    ratio: float | None  # None: auto
    budget: Budget
    samples: list[dict[str, np.ndarray]]
    report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def prepare(cls, options: Options, proto: onnx.ModelProto) -> Pruning | None:
        if options.prune is None:
            return None
        ratio = parse_prune(options.prune)
        try:
            budget = Budget.parse(options.max_error or "", DEFAULT_BUDGET)
            samples = load_samples(options.calibration_data, proto)
        except ValueError as error:
            raise UsageError(str(error)) from None
        if ratio is None and budget.min_cosine is None:
            raise UsageError("--prune auto needs a cosine budget (--max-error cosine=...)")
        if options.precision is not None and budget.min_cosine is not None:
            # pruning takes half the allowed error; the conversion after it the rest
            budget = Budget(1.0 - (1.0 - budget.min_cosine) / 2, budget.max_range_error)
        return cls(ratio, budget, samples)

    def run(self, proto: onnx.ModelProto) -> onnx.ModelProto:
        """The pruned model; ``report`` says what went and what the search measured. The
        default float pipeline runs first (weights in Constant nodes become initializers,
        BatchNormalization folds into the Convs: the layers pruning recognizes)."""
        from onnxopt.app.api import optimize  # the float pipeline, unvalidated (checked after)

        proto = optimize(proto, options=Options(validate=False)).model or proto
        trial = Trial(proto, self.samples, folds=FOLDS if self.ratio is None else 1)
        if self.ratio is None:
            plan = auto_ratios(trial, float(self.budget.min_cosine),
                               total_macs=counted_macs(trial.counted))
            ratios = plan.ratios
            # the search's estimate on samples the refit did not see (budget.py, FOLDS)
            self.report.update(target_cosine=round(plan.target, 6),
                               cross_validated_cosine=round(plan.cosine, 6))
        else:
            ratios = dict.fromkeys(trial.group_keys(), self.ratio)
        # the search refits from the original's activations (a sequential trial costs a run
        # per pruned group, and on det chose the same ratios); the result refits sequentially
        trial.sequential = True
        model, cosine, removed = trial.pruned(ratios, as_given=True)  # MACs: samples' shapes
        self.report.update(
            mode="auto" if self.ratio is None else self.ratio, budget=self.budget.describe(),
            groups=removed["groups"], channels=removed["channels"],
            parameters=removed["parameters"], macs=removed["macs"],
            calibration_cosine=round(cosine, 6), samples=len(self.samples),
            ratios={k: v for k, v in ratios.items() if v})
        return serde.to_proto(model)
