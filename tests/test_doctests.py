"""The examples in docstrings are run, so the documentation cannot drift from the code."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = (
    "diag",
    "diag.backend",
    "diag.formats",
    "diag.probes",
    "diag.diagnostics",
    "diag.reports",
    "diag.train",
)
SKIP = {"diag.__main__"}  # runs the CLI on import


def _modules() -> list[str]:
    names = set()
    for package in PACKAGES:
        path = importlib.import_module(package).__path__  # folders mapped in by package-dir
        names.update(m.name for m in pkgutil.iter_modules(path, package + ".") if not m.ispkg)
    return sorted(names - SKIP)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
