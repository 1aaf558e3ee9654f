"""Quantization arithmetic: qparams, affine (block-wise) quantization, granularities, error metrics."""
