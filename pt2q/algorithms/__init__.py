"""Algorithms on top of the flow: GPTQ, SmoothQuant, bias correction, the accuracy-aware one call."""
