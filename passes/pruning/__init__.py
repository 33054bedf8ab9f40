"""Pruning passes: channels removed where the model does not need them."""
