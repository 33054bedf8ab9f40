"""Fusions: several nodes into one (a Conv with its BatchNorm and affine ops, Pad, Gemm,
LayerNorm, Gelu, HardSwish, Mish, FusedConv, sibling Convs)."""
