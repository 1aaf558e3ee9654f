"""Lowering of converted pt2q graphs to int8 runtimes."""
