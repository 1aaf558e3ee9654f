"""Backend quantizers built on pt2q\x27s annotators."""
