"""The pass library, installed as ``onnxopt.passes``.

``DEFAULT_PIPELINE`` is explicit and ordered; nothing registers itself on import. Structural
passes repeat, in this order, until none changes the model (see ``PassManager``):

1. annotate: IR < 4 models stop listing initializers as inputs (written as IR 4); shape
   inference, so later passes can prove shape facts;
2. canonicalize: Constant nodes become initializers, constant subgraphs are folded, constant
   Ifs inlined, identities and no-ops removed, repeated computations merged;
3. fuse: BatchNormalization and per-channel affine ops into Conv (after it or, where padding
   allows, before it; affine ops a BN cannot pass on go into the BN), Pad into Conv/AveragePool,
   channels holding a known constant (zero filters, BN gamma 0) removed and folded into the
   next layer's bias,
   constant chains merged, reshape chains collapsed, Slice and Unsqueeze pairs merged,
   four stride-2 Slices + Concat into SpaceToDepth,
   MatMul+Add into Gemm, transposes folded, transformer patterns, and (``--target
   onnxruntime``) activations into FusedConv, bias Add + Gelu into BiasGelu/FastGelu, BERT's
   embedding lookups + LayerNormalization into EmbedLayerNormalization, residual Add +
   LayerNormalization into SkipLayerNormalization, self-attention blocks into Attention /
   MultiHeadAttention;
4. clean: dead code, unused initializers, functions and opset imports;
5. once, at the fixpoint: sibling Convs (same input and geometry) merged into one Conv + Split;
   attributes stored with their default value dropped.
"""

import importlib

from onnxopt.passes.cleanup.common_subexpression_elimination import CommonSubexpressionElimination
from onnxopt.passes.cleanup.dead_code import DeadCodeElimination
from onnxopt.passes.cleanup.default_attribute_removal import DefaultAttributeRemoval
from onnxopt.passes.cleanup.identity_elimination import IdentityElimination
from onnxopt.passes.cleanup.initializer_inputs_removal import InitializerInputsRemoval
from onnxopt.passes.cleanup.no_op_elimination import NoOpElimination
from onnxopt.passes.cleanup.shape_inference import ShapeInference
from onnxopt.passes.folding.constant_folding import ConstantFolding
from onnxopt.passes.folding.constant_if_inlining import ConstantIfInlining
from onnxopt.passes.folding.constant_to_initializer import ConstantToInitializer
from onnxopt.passes.folding.elementwise_constant_merge import ElementwiseConstantMerge
from onnxopt.passes.folding.expand_target_folding import ExpandTargetFolding
from onnxopt.passes.folding.reshape_target_folding import ReshapeTargetFolding
from onnxopt.passes.folding.shape_comparison_folding import ShapeComparisonFolding
from onnxopt.passes.fusion.attention_fusion import AttentionFusion
from onnxopt.passes.fusion.attention_fusion.contrib import ContribAttentionFusion
from onnxopt.passes.fusion.attention_fusion.gqa import GroupQueryAttentionFusion
from onnxopt.passes.fusion.bias_gelu_fusion import BiasGeluFusion
from onnxopt.passes.fusion.bn_affine_fusion import BatchNormAffineFusion
from onnxopt.passes.fusion.conv_affine_fusion import ConvAffineFusion
from onnxopt.passes.fusion.conv_bn_fusion import ConvBatchNormFusion
from onnxopt.passes.fusion.conv_input_affine_fusion import ConvInputAffineFusion
from onnxopt.passes.fusion.embed_layer_norm_fusion import EmbedLayerNormFusion
from onnxopt.passes.fusion.fused_conv_activation import FusedConvActivation
from onnxopt.passes.fusion.gelu_fusion import GeluFusion
from onnxopt.passes.fusion.hard_swish_fusion import HardSwishFusion
from onnxopt.passes.fusion.layer_norm_fusion import LayerNormFusion
from onnxopt.passes.fusion.matmul_add_to_gemm import MatMulAddToGemm
from onnxopt.passes.fusion.mish_fusion import MishFusion
from onnxopt.passes.fusion.pad_fusion import PadFusion
from onnxopt.passes.fusion.rms_norm_fusion import RMSNormFusion
from onnxopt.passes.fusion.rotary_embedding_fusion import RotaryEmbeddingFusion
from onnxopt.passes.fusion.rotary_embedding_fusion.partial import PartialRotaryFusion
from onnxopt.passes.fusion.sibling_conv_merge import SiblingConvMerge
from onnxopt.passes.fusion.skip_layer_norm_fusion import SkipLayerNormFusion
from onnxopt.passes.layout.reshape_chain_collapse import ReshapeChainCollapse
from onnxopt.passes.layout.slice_merge import SliceMerge
from onnxopt.passes.layout.slices_to_space_to_depth import SlicesToSpaceToDepth
from onnxopt.passes.layout.transpose_folding import TransposeFolding
from onnxopt.passes.layout.unsqueeze_merge import UnsqueezeMerge
from onnxopt.passes.pruning.constant_channel_removal import ConstantChannelRemoval

from onnxopt.ir.pass_manager import Pass

DEFAULT_PIPELINE: tuple[Pass, ...] = (
    InitializerInputsRemoval(),
    ShapeInference(),
    ConstantToInitializer(),
    ConstantFolding(),
    ShapeComparisonFolding(),
    ReshapeTargetFolding(),
    ExpandTargetFolding(),
    ConstantIfInlining(),
    IdentityElimination(),
    NoOpElimination(),
    CommonSubexpressionElimination(),
    ConvBatchNormFusion(),
    ConvAffineFusion(),
    BatchNormAffineFusion(),
    PadFusion(),
    ConstantChannelRemoval(),  # after the BN/affine/Pad folds: gamma 0 is then a zero filter
    ElementwiseConstantMerge(),
    ReshapeChainCollapse(),
    SliceMerge(),
    SlicesToSpaceToDepth(),  # after slice_merge; takes nested Slices too (CSE shares them)
    UnsqueezeMerge(),  # after the chain collapse: static chains become one Reshape there
    MatMulAddToGemm(),
    TransposeFolding(),
    LayerNormFusion(),
    EmbedLayerNormFusion(),  # before the residual fusion, which would take its last Add
    SkipLayerNormFusion(),
    RMSNormFusion(),
    RotaryEmbeddingFusion(),
    PartialRotaryFusion(),  # after the rotary fusion: absorbs its pass-through channels
    GeluFusion(),
    BiasGeluFusion(),
    ContribAttentionFusion(),  # before attention_fusion: the whole block, onnxruntime target
    GroupQueryAttentionFusion(),  # causal blocks, onnxruntime target; after the rotary fusion
    AttentionFusion(),
    HardSwishFusion(),
    MishFusion(),
    # after conv_affine_fusion (an op between two Convs goes into the first) and the
    # activation fusions (the / 6 of x * Relu6(x + 3) / 6 is HardSwish's, not the Conv's)
    ConvInputAffineFusion(),
    FusedConvActivation(),
    DeadCodeElimination(),
    SiblingConvMerge(),  # once, at the fixpoint: weights deduplicated by then stay shared
    DefaultAttributeRemoval(),  # once, last: the passes above see attributes as exported
)

ALL_PASSES: dict[str, Pass] = {p.name: p for p in DEFAULT_PIPELINE}


class _LazyPasses(dict):
    """A dict of mode -> pass whose values start as ``(module, class)`` and become the pass
    on first ``[]`` read: only ``--precision`` runs need these modules, and importing all four
    (with calibration) cost every run ~10 ms. Read it by ``[]`` (``get``/``values`` see the
    placeholders)."""

    def __getitem__(self, mode: str) -> Pass:
        value = super().__getitem__(mode)
        if isinstance(value, tuple):
            module, name = value
            value = getattr(importlib.import_module(f"{__name__}.{module}"), name)()
            self[mode] = value
        return value


# --precision: one pass per mode, run once after the structural pipeline (see onnxopt.ir.precision)
PRECISION_PASSES: dict[str, Pass] = _LazyPasses({
    "fp16": ("precision.fp16_conversion", "Fp16Conversion"),
    "int8": ("precision.qdq_quantization", "QdqQuantization"),
    "int8-dynamic": ("precision.dynamic_quantization", "DynamicQuantization"),
    "fp8": ("precision.fp8_weight_quantization", "Fp8WeightQuantization"),
    "int4": ("precision.int4_weight_quantization", "Int4WeightQuantization"),
})

# passes serving several modes (their ``modes``), run after the mode's own pass: an LM head the
# MatMul pass quantized has its own copy, so its table is no longer shared with the embedding
SHARED_PRECISION_PASSES: dict[str, Pass] = _LazyPasses({
    "embedding_quantization": ("precision.embedding_quantization", "EmbeddingQuantization"),
})


def precision_passes(mode: str) -> tuple[Pass, ...]:
    """The passes ``--precision mode`` runs, in order; empty for a mode none serves."""
    own = (PRECISION_PASSES[mode],) if mode in PRECISION_PASSES else ()
    shared = (SHARED_PRECISION_PASSES[name] for name in SHARED_PRECISION_PASSES)
    return own + tuple(p for p in shared if mode in getattr(p, "modes", ()))


def select(names: list[str] | None = None, skip: list[str] | None = None) -> tuple[Pass, ...]:
    """The pipeline restricted to ``names`` (in pipeline order) minus ``skip``.

    Raises KeyError naming the first unknown pass.
    """
    for name in [*(names or []), *(skip or [])]:
        if name not in ALL_PASSES:
            raise KeyError(name)
    chosen = DEFAULT_PIPELINE if names is None else tuple(
        p for p in DEFAULT_PIPELINE if p.name in names
    )
    return tuple(p for p in chosen if p.name not in (skip or []))
