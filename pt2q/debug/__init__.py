"""Reading a quantized model: the report, the numeric debugger, per-layer errors."""
