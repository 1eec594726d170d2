"""Structure counts (issue 14): how often metric names are spelled out, dict-chain reads, long
files and functions, private names imported across modules, module names used twice.

    python benchmarks/structure_counts.py        # from a checkout's root; non-test Python only
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

METRIC_NAMES = ["identity_recall", "near_miss", "general_accuracy", "retention", "drift",
                "seq_rep_4", "loop_rate", "parrot_leakage", "modal_share"]  # fmt: skip


def main() -> None:
    listed = subprocess.check_output(["git", "ls-files", "*.py"], text=True).split()
    files = [Path(f) for f in listed if not f.startswith("tests/")]
    src = {f: f.read_text(encoding="utf-8") for f in files}

    def literal(name: str) -> tuple[int, int]:
        pattern = re.compile(r"[\"']" + name + r"[\"']")
        hits = [len(pattern.findall(text)) for text in src.values()]
        return sum(hits), sum(1 for h in hits if h)

    counts = [literal(m) for m in METRIC_NAMES]
    print(f"metric-name literals: {sum(c[0] for c in counts)} in {sum(c[1] for c in counts)} "
          "file-metric pairs")  # fmt: skip
    print("'modal_share' literal: {} in {} files".format(*literal("modal_share")))
    layers = ("diagnostics", "reports")
    gets = sum(text.count(".get(") for f, text in src.items() if f.parts[0] in layers)
    print(f".get( in diagnostics/ + reports/: {gets}")
    print(f".get( in all non-test code: {sum(t.count('.get(') for t in src.values())}")
    long_files = sorted((len(t.splitlines()), str(f)) for f, t in src.items())
    over = [f"{f} ({n})" for n, f in long_files if n > 300]
    print(f"files over 300 lines: {len(over)} {over}")
    long_functions, private = [], []
    for f, text in src.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long_functions.append(f"{f}:{node.name} ({length})")
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                private += [
                    f"{f}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    print(f"functions over 60 lines: {len(long_functions)} {long_functions}")
    print(f"private names imported from another module: {len(private)} {private}")
    stems: dict[str, list[str]] = {}
    for f in files:
        if f.name != "__init__.py" and f.parts[0] != "benchmarks":
            stems.setdefault(f.stem, []).append(str(f))
    twice = {stem: paths for stem, paths in stems.items() if len(paths) > 1}
    print(f"module names used twice: {len(twice)} {twice}")
    guards = [str(f) for f, text in src.items() if re.search(r"find_spec\([\"']diag", text)]
    print(f"find_spec guards on diag's own modules: {guards}")


if __name__ == "__main__":
    main()
