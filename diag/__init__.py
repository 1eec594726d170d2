"""diag: evaluation-first overfitting diagnostics for LLM fine-tuning.

Everything heavy (torch, transformers, peft, plotly) is imported lazily, so `import diag` and
`diag --help` stay fast. The sweep API is re-exported lazily too::

    import diag
    result = diag.sweep("runs/")          # probes every checkpoint under runs/
    result.scores()                       # long-format pandas DataFrame
    diag.write_report(result)             # report.html beside results.json
    again = diag.load_sweep("runs/diag")  # reads stored results back, no model needed
    again.record.recommendation.step      # the same results as typed records
"""

from __future__ import annotations

__version__ = "0.1.0"

# Name -> "module:attribute" for the lazily re-exported public API.
_LAZY = {
    "sweep": "diag.diagnostics.sweeper:sweep",
    "load_sweep": "diag.diagnostics.stored:load_sweep",
    "write_report": "diag.reports.build:write_report",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name].split(":")
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'diag' has no attribute {name!r}")
