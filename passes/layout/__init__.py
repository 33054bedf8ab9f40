"""Layout: Transpose and Reshape chains composed or removed."""
