"""The vocabulary and graph infrastructure every pass reads: operators, patterns, specs, node notes, control
flow, graph attributes.
"""
