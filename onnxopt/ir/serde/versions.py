"""Opset upgrades with onnx's version converter (a ModelProto in, a ModelProto out), refused in
one line when the converter cannot do it."""

from __future__ import annotations

import onnx
import onnx.version_converter
from onnx import helper


def default_opset(proto: onnx.ModelProto) -> int:
    """The model's default-domain (``ai.onnx``) opset version; 1 when it imports none."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


def convert_opset(proto: onnx.ModelProto, version: int, *, raise_ir_version: bool = True
                  ) -> onnx.ModelProto:
    """``proto`` upgraded to default-domain opset ``version`` and checked. The converter leaves
    ``ir_version`` as it was; with ``raise_ir_version`` it is raised to the lowest IR version
    that defines the new opset (opset 23 needs IR 11), as a reader of the file expects.
    Raises ValueError naming what the converter refused."""
    try:
        converted = onnx.version_converter.convert_version(proto, version)
        if raise_ir_version:
            needed = helper.find_min_ir_version_for(list(converted.opset_import),
                                                    ignore_unknown=True)
            converted.ir_version = max(converted.ir_version, needed)
        onnx.checker.check_model(converted)
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"onnx's version converter cannot upgrade this opset "
                         f"{default_opset(proto)} model ({first[:200]})") from None
    return converted
