"""pt2q: quantize torch.export programs and lower them to int8 runtimes."""
