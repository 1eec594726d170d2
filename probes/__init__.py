"""Probe suite (installed as ``diag.probes``): pure functions from model answers to scores.

Probes never import torch: they read generation and log-likelihood records.
"""
