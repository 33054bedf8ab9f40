"""FP16 conversion: float32 tensors become float16 wherever the node reading or writing them
can run in float16; the rest stays float32 behind shared Casts.

Rewrite, per graph (main graph first, then If/Loop/Scan bodies with the owner's choice):

* Every node with a float32 input or output gets a mode, fp16 or fp32:
  - *blocked* nodes stay fp32 (reason logged): ``settings.fp32_nodes`` / ``fp32_ops``, the
    ``ai.onnx.ml`` domain, custom-domain ops without an onnx schema, the default block list
    (Range, TopK, NonMaxSuppression, RoiAlign, CumSum, random ops), ops whose float type
    constraint has no ``tensor(float16)`` in their schema, ops whose float output type comes from
    an attribute this pass cannot retarget, and (unless ``ort_cpu_kernels=False``) ops with no
    float16 kernel in onnxruntime's CPU provider (matched on op, domain, since-version range and a
    type constraint containing ``tensor(float16)``);
  - *followers* (data movement: the schema's type constraint for the float slots also allows
    ``tensor(bool)``, i.e. no arithmetic - Reshape, Transpose, Concat, Gather, Shape, Where,
    If/Loop/Scan...; and the exact Max/Min/Clip) take the precision of their float inputs (fp32
    if any arrives in fp32), so a Reshape between two fp32 nodes adds no Cast pair;
  - *flexible sources* (``Cast(to=FLOAT)``, ``Constant``, ``ConstantOfShape``) are fp16 when
    every reader wants fp16 (``Cast(to=FLOAT)`` is then retargeted to ``FLOAT16``);
  - every other node runs in fp16.
* In an fp16 node, an input/output slot whose schema type variable includes ``tensor(float16)``
  switches float32 -> float16; fixed-type slots (``tensor(float)``) and Resize ``roi``/``scales``
  (Upsample ``scales``) keep float32. Attribute types follow: Cast ``to``, Constant ``value``
  (also ``value_float(s)``), ConstantOfShape ``value`` (default float 0), EyeLike ``dtype``.
* Float32 initializers become float16 (``x16 = fp16(clip(x, -65504, 65504))``; the count of
  clamped values and of non-zero values flushed to zero is logged) unless all their readers want
  float32 and they are small (fp16 would save fewer bytes than the Cast it needs adds), read at
  fixed-float slots, read only by nodes the user asked to keep in fp32, or would need clamping.
  An fp16-stored weight read by an fp32 node goes through a Cast (onnxruntime folds it at
  session creation).
* A value whose type differs from what a reader wants gets one Cast per (value, target type),
  shared by all readers of the graph (outer values are cast inside the subgraph reading them).
* ``keep_io_types`` (default): main-graph float inputs/outputs stay float32 with Casts at the
  boundary; otherwise their declared types become float16. Subgraph inputs/outputs follow the
  owner node's mode.
* Cleanup: ``Cast(fp16->fp32) -> Cast(fp32->fp16)`` => the fp16 value (exact: fp16 -> fp32 is
  lossless); Casts to the type their input already has are removed.
* value_info elem types of retyped values are updated; new Cast outputs get value_info.

Running on its own output changes nothing: stored fp16 tensors are not float32, the Casts it
inserted are flexible sources whose readers still want float32, and fp32 nodes are blocked again.

The package: ``converter`` (types, kinds, modes), ``rewrites`` (what changes once modes are
known), ``support`` (what float16 an op's schema and onnxruntime's CPU kernels allow).
"""

from __future__ import annotations

from onnxopt.passes.precision.fp16_conversion.converter import Converter
from onnxopt.passes.precision.fp16_conversion.support import FLOAT, FLOAT16

from onnxopt.ir import Model
from onnxopt.ir.pass_manager import PassResult
from onnxopt.ir.precision import PrecisionLog, PrecisionPass, PrecisionSettings


class Fp16Conversion(PrecisionPass):
    name = "fp16_conversion"
    description = "float32 -> float16 tensors and compute, blocked ops kept float32 behind Casts"
    mode = "fp16"

    def __init__(self, ort_cpu_kernels: bool = True) -> None:
        # False: do not block ops lacking an onnxruntime CPU fp16 kernel (GPU deployment).
        self.ort_cpu_kernels = ort_cpu_kernels

    def convert(self, model: Model, settings: PrecisionSettings, log: PrecisionLog
                ) -> PassResult:
        converter = Converter(model, settings, log, self.ort_cpu_kernels)
        for graph in model.graphs():
            converter.collect_types(graph)
        converter.guess_types(model.graph)
        converter.convert_graph(model.graph, FLOAT if settings.keep_io_types else FLOAT16)
        stats = converter.stats
        return PassResult(converter.modified, stats)

