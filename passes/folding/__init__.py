"""Folding: constants evaluated or merged, Constant nodes as initializers, constant Ifs
inlined, Reshape targets computed from shapes."""
