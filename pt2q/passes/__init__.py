"""Graph passes, one per module, and the two pipelines that compose them (prepare.py, convert.py)."""
