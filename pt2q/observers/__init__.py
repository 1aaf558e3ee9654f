"""Observers: modules that record tensor statistics and compute qparams from them."""
