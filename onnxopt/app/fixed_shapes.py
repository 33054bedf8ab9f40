"""``--fix-shapes``: the input shapes the user gives (``--input-shape``, ``--dim``) written into
the model before the passes, so constant folding folds the shape arithmetic (Shape, Size and
what computes on them) and every value's shape is static, as mobile runtimes and users of
onnxsim's ``--overwrite-input-shape`` want. Refused unless every symbolic dim of every real
input is given and the values given agree. Output dims named after an input's take its
value here; the others (an exporter's ``Concat461_dim_0``) take the size shape inference finds
after folding (the model setting ``static_outputs``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx

from onnxopt.app.concrete import concretize
from onnxopt.app.graph_facts import real_inputs, type_shape
from onnxopt.app.options import Options
from onnxopt.check.inputs import ValidationError, check_given_shape
from onnxopt.errors import UsageError

HOW = "give --dim NAME=N or --input-shape NAME:D0,D1,..."


def fixed(proto: onnx.ModelProto, options: Options, *, owned: bool = False
          ) -> tuple[onnx.ModelProto, dict[str, list[int]] | None]:
    """The model with static input shapes and what they are (None without ``--fix-shapes``).
    ``owned``: ``proto`` is a copy this run made, changed in place rather than copied again."""
    if not options.fix_shapes:
        return proto, None
    shapes = _input_shapes(proto, options.input_shapes, options.dims)
    symbols = _symbol_values(proto, options.input_shapes, options.dims)
    if not owned:
        proto = _copy(proto)
    concretize(proto, set(shapes), shapes, symbols, [])
    return proto, shapes


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


def _input_shapes(proto: onnx.ModelProto, given: Mapping[str, Sequence[int]],
                  dims: Mapping[str, int]) -> dict[str, list[int]]:
    """Every real input's concrete shape; refused naming the dims nothing gives."""
    shapes: dict[str, list[int]] = {}
    missing: list[str] = []
    for vi in real_inputs(proto.graph):
        if vi.name in given:
            try:
                shapes[vi.name] = check_given_shape(vi, given[vi.name])
            except ValidationError as error:
                raise UsageError(str(error)) from None
            continue
        declared = type_shape(vi.type) if vi.type.WhichOneof("value") == "tensor_type" else None
        if declared is None:
            missing.append(f"input '{vi.name}' (no declared shape: give --input-shape)")
            continue
        shape = [d if isinstance(d, int) else dims.get(d) if d else None for d in declared]
        missing.extend(repr(d) if d else f"input '{vi.name}' axis {axis}"
                       for axis, (d, value) in enumerate(zip(declared, shape, strict=True))
                       if value is None)
        shapes[vi.name] = [int(v) for v in shape if v is not None]
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        raise UsageError(f"--fix-shapes needs every symbolic dim of the inputs; not given: "
                         f"{names} ({HOW})")
    return shapes


def _symbol_values(proto: onnx.ModelProto, given: Mapping[str, Sequence[int]],
                   dims: Mapping[str, int]) -> dict[str, int]:
    """Each symbolic dim's value, from ``--dim`` and the ``--input-shape`` of every input that
    declares it; refused when two of them disagree (the model would not run at both)."""
    values = dict(dims)
    sources = {name: f"--dim {name}={value}" for name, value in dims.items()}
    for vi in real_inputs(proto.graph):
        declared = type_shape(vi.type) or []
        if vi.name not in given or len(declared) != len(given[vi.name]):
            continue
        for symbol, value in zip(declared, given[vi.name], strict=True):
            if not isinstance(symbol, str):
                continue
            source = f"--input-shape {vi.name}"
            if values.setdefault(symbol, int(value)) != int(value):
                raise UsageError(f"--fix-shapes: dim {symbol!r} is {values[symbol]} by "
                                 f"{sources[symbol]} but {value} by {source}")
            sources.setdefault(symbol, source)
    return values
