"""The shape of the code (docs/architecture.md): imports run one way, names explain themselves."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"diag": "diag", "probes": "diag.probes", "diagnostics": "diag.diagnostics",
           "reports": "diag.reports", "train": "diag.train"}  # fmt: skip
SHARED = {"diag.types", "diag.errors", "diag.identity", "diag.task", "diag.metrics", "diag.records", "diag.serde",
          "diag.files", "diag.stats", "diag.models", "diag.display"}  # fmt: skip
# layer -> the layers it may import (besides the shared modules and itself)
ALLOWED = {
    "shared": set(),
    "diag.formats": set(),
    "diag.data": {"diag.formats"},  # training data: read, converted, what it taught
    "diag.backend": {"diag.formats"},
    "diag.probes": set(),  # probes never import the model backend (or torch)
    "diag.diagnostics": {"diag.formats", "diag.data", "diag.backend", "diag.probes"},
    "diag.reports": set(),  # a pure function of stored results
    "diag.train": {"diag.formats", "diag.data", "diag.backend", "diag.probes", "diag.diagnostics",
                   "diag.reports"},
    "diag.commands": {"diag.formats", "diag.data", "diag.backend", "diag.probes",
                      "diag.diagnostics", "diag.reports", "diag.train"},
}  # fmt: skip


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def _layer(module: str) -> str:
    if module in SHARED or module in ("diag", "diag.cli", "diag.__main__"):
        return "shared" if module in SHARED else "diag.commands"
    parts = module.split(".")
    return (
        ".".join(parts[:2])
        if len(parts) > 2 or parts[1] in ("formats", "data", "backend")
        else module
    )


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def test_imports_run_one_way():
    wrong = []
    for module, path in _modules().items():
        layer = _layer(module)
        for target, _ in _imports(path):
            if not target.startswith("diag."):
                continue
            other = _layer(target)
            if other in (layer, "shared") or other in ALLOWED.get(layer, set()):
                continue
            wrong.append(f"{module} ({layer}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


def test_no_private_name_is_imported_from_another_module():
    wrong = [
        f"{module}: from {target} import {name}"
        for module, path in _modules().items()
        for target, names in _imports(path)
        if target.startswith("diag")
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not wrong, "\n".join(wrong)


def test_no_two_modules_share_a_name():
    stems: dict[str, list[str]] = {}
    for module in _modules():
        stem = module.rsplit(".", 1)[-1]
        if module.count(".") >= 1 and stem not in ("__init__", "diag", "probes", "diagnostics",
                                                   "reports", "train", "backend", "formats",
                                                   "commands"):  # fmt: skip
            stems.setdefault(stem, []).append(module)
    assert {s: m for s, m in stems.items() if len(m) > 1} == {}
