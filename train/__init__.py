"""Thin trainer (installed as ``diag.train``): frequent checkpoints and data dilution."""
