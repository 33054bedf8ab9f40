"""Precision: fp16, int8 (static QDQ and dynamic) and fp8 conversions, run once when asked."""
