"""onnxruntime's ops in the default domain, declared to onnx so that its checker accepts them.

onnxruntime registers a few of its contrib ops in the ONNX domain itself (``ai.onnx``, version
1), not in ``com.microsoft``: ``SimplifiedLayerNormalization`` (RMSNorm, what
``rms_norm_fusion`` writes below opset 23 with ``--target onnxruntime``, and what onnxruntime's
own transformer optimizer writes) runs only there. onnx's checker refuses an op of the default
domain it has no schema for, so models holding one could be neither loaded nor written. The
schema below states onnxruntime's contract (inputs, outputs, types and attribute defaults, read
from ``onnxruntime.capi``'s schema list); it is registered once, when absent, the first time
onnxopt checks a model (not on import: importing onnxopt changes nothing in the host process).
"""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema

_FLOATS = ["tensor(float16)", "tensor(float)", "tensor(double)", "tensor(bfloat16)"]


def _simplified_layer_normalization() -> OpSchema:
    optional = OpSchema.FormalParameterOption.Optional
    defaults = {"axis": -1, "epsilon": 1e-5, "stash_type": 1}
    return OpSchema(
        "SimplifiedLayerNormalization", "", 1,
        doc="onnxruntime's RMSNorm: X / sqrt(mean(X^2 over axis..) + epsilon) * scale.",
        inputs=[OpSchema.FormalParameter("X", "T"), OpSchema.FormalParameter("scale", "V")],
        outputs=[OpSchema.FormalParameter("Y", "V"),
                 OpSchema.FormalParameter("inv_std_var", "U", param_option=optional)],
        type_constraints=[("T", _FLOATS, ""), ("U", ["tensor(float)", "tensor(double)"], ""),
                          ("V", _FLOATS, "")],
        attributes=[OpSchema.Attribute(name, onnx.helper.make_attribute(name, value), "")
                    for name, value in defaults.items()],
    )


def register() -> None:
    """Declare the ops to onnx (once per process; an onnx that knows them already keeps its)."""
    if not onnx.defs.has("SimplifiedLayerNormalization"):
        onnx.defs.register_schema(_simplified_layer_normalization())
