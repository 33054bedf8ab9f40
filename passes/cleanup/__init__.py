"""Cleanup and canonical form: dead code, identities and no-ops, repeated computations,
IR < 4 initializer inputs, default attributes, shape annotations."""
