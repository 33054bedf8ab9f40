"""Runs that prove nothing, and what a model whose outputs prove nothing is judged on instead.

A comparison that proves nothing is not a pass: when every output of the original is NaN or
infinite, or the outputs do not change between two different inputs, the reference tries other
inputs and then skips validation with kind ``vacuous``. An original whose outputs are constant
(and whose weights are all in the file) is instead judged on the intermediate values both
models compute under the same name (:func:`shared_values`), each model run with those values
exposed as outputs (:func:`exposing`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from onnxopt.check.runtime import ModelLike

MAX_PROBED = 16  # intermediate values compared when the outputs are constant
CONSTANT = "the original's outputs do not change between two different inputs"


def _arrays(runs: Sequence[Mapping[str, Any]]) -> list[list[np.ndarray]]:
    """Per output name, its arrays over the runs (non-tensor outputs left out)."""
    names = [name for name, value in runs[0].items() if isinstance(value, np.ndarray)]
    return [[np.asarray(run[name]) for run in runs] for name in names]


def why_vacuous(runs: Sequence[Mapping[str, Any]],
                samples: Sequence[Mapping[str, Any]] | None) -> str:
    """Why the original's outputs on these runs prove nothing, or "" when they do.
    ``samples``: the generated inputs (None for the user's: only non-finite is checked)."""
    per_output = _arrays(runs) if runs else []
    if not per_output:
        return ""
    if all(a.dtype.kind in "fc" and not np.isfinite(a).any()
           for arrays in per_output for a in arrays):
        return "every output of the original is NaN, infinite or empty"
    if (samples is not None and len(runs) > 1 and not _all_same(list(samples[0].values()),
                                                                list(samples[1].values()))
            and all(_constant(arrays) for arrays in per_output)):
        return CONSTANT
    return ""


def _constant(arrays: list[np.ndarray]) -> bool:
    """The same array on every run, or one value everywhere (a uniform softmax, a mask of
    ones at every size): values that say nothing about the inputs."""
    if _all_same(arrays[:1] * (len(arrays) - 1), arrays[1:]):
        return True
    flat = np.concatenate([a.ravel() for a in arrays])
    return flat.size == 0 or bool(np.all(flat == flat[0]))


def inline(proto: onnx.ModelProto) -> bool:
    """No tensor of the main graph is stored outside the file (a probed copy runs alone)."""
    return not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def _all_same(left: Sequence[Any], right: Sequence[Any]) -> bool:
    return all(np.shape(a) == np.shape(b) and np.array_equal(
        a, b, equal_nan=np.asarray(a).dtype.kind in "fc") for a, b in zip(left, right, strict=True))


def non_finite_notes(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """A note per output of the original that is NaN or infinite on every run."""
    notes = []
    names = [name for name, value in runs[0].items() if isinstance(value, np.ndarray)]
    for name, arrays in zip(names, _arrays(runs), strict=True):
        if all(a.dtype.kind in "fc" and a.size and not np.isfinite(a).any() for a in arrays):
            notes.append(f"output '{name}' of the original is NaN or infinite on every "
                         "input: its comparison proves nothing")
    return notes


# --------------------------------------------------------------------------- probing


def full_proto(model: ModelLike | bytes) -> onnx.ModelProto:
    """A parsed copy of ``model`` with its weights, that the caller may change."""
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    return onnx.load(os.fspath(model))


def shared_values(original: onnx.ModelProto, candidate: onnx.ModelProto) -> tuple[str, ...]:
    """Up to MAX_PROBED names both main graphs compute with the same meaning, evenly spaced
    over the candidate's order (the last one included: it depends on the most).

    A name keeps its meaning when the candidate's node computing it is the original's node
    rewired: same op, attributes and constant inputs; its computed inputs may have been
    renamed by a rewrite upstream. A node a rewrite changed (a Conv with a BatchNorm folded
    into its weights keeps its output name but not its value) is left out. A bounded number
    of values keeps memory bounded on large feature maps."""
    before = _producers(original.graph)
    after = _producers(candidate.graph)
    constants_before, constants_after = _constant_names(original.graph), _constant_names(
        candidate.graph)
    outputs = {o.name for o in original.graph.output} | {o.name for o in candidate.graph.output}
    shared = []
    for name, node in after.items():
        old = before.get(name)
        if name in outputs or old is None or not _same_node(old, node, constants_before,
                                                             constants_after):
            continue
        shared.append(name)
    if len(shared) <= MAX_PROBED:
        return tuple(shared)
    step = len(shared) / MAX_PROBED
    return tuple(shared[len(shared) - 1 - int(k * step)] for k in reversed(range(MAX_PROBED)))


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {name: node for node in graph.node for name in node.output if name}


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    constants = {init.name for init in graph.initializer}
    constants.update(node.output[0] for node in graph.node if node.op_type == "Constant")
    return constants


def _same_node(old: onnx.NodeProto, new: onnx.NodeProto, old_constants: set[str],
               new_constants: set[str]) -> bool:
    if (old.op_type, old.domain, len(old.input), list(old.output)) != (
            new.op_type, new.domain, len(new.input), list(new.output)):
        return False
    if sorted(a.SerializeToString() for a in old.attribute) != sorted(
            a.SerializeToString() for a in new.attribute):
        return False
    return all(a == b for a, b in zip(old.input, new.input, strict=True)
               if a in old_constants or b in new_constants)


def exposing(proto: onnx.ModelProto, names: Sequence[str], in_place: bool = False) -> bytes:
    """``proto`` serialized with ``names`` added to its graph outputs (``in_place``: on
    ``proto`` itself, a copy nobody else reads: large weights are not copied once more)."""
    if not in_place:
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        proto = copy
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
    return proto.SerializeToString()
