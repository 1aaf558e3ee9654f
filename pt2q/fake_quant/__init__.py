"""Fake quantizers for quantization-aware training."""
