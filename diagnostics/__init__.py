"""Diagnostics (installed as ``diag.diagnostics``): discover checkpoints, sweep, recommend, gate."""
