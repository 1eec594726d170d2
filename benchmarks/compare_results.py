"""Compare two sweep result folders value by value (a refactor must not change a number).

    python benchmarks/compare_results.py BEFORE_DIR AFTER_DIR

Compares results.json (every key and value, ignoring only timestamps and durations),
samples.jsonl (line by line) and scores.csv (byte for byte). Exit 0 when equal, 1 otherwise,
with each difference printed as its JSON path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

IGNORED = {"created", "timing.seconds"}  # when the sweep ran and how long it took


def differences(a, b, where: str = "") -> list[str]:
    if where in IGNORED:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            path = f"{where}.{key}" if where else str(key)
            if key not in a or key not in b:
                out.append(f"{path}: only in {'after' if key not in a else 'before'}")
            else:
                out += differences(a[key], b[key], path)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items before, {len(b)} after"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b and type(a) is type(b) else [f"{where}: {a!r} before, {b!r} after"]


def compare(before: Path, after: Path) -> list[str]:
    found = differences(
        json.loads((before / "results.json").read_text("utf-8")),
        json.loads((after / "results.json").read_text("utf-8")),
    )
    samples = [
        [json.loads(line) for line in (folder / "samples.jsonl").read_text("utf-8").splitlines()]
        for folder in (before, after)
    ]
    found += [f"samples.jsonl{d}" for d in differences(*samples)]
    if (before / "scores.csv").read_bytes() != (after / "scores.csv").read_bytes():
        found.append("scores.csv differs")
    return found


if __name__ == "__main__":
    before, after = Path(sys.argv[1]), Path(sys.argv[2])
    found = compare(before, after)
    for line in found[:50]:
        print(line)
    data = json.loads((after / "results.json").read_text("utf-8"))
    print(
        f"{len(data['checkpoints'])} checkpoints, "
        f"{sum(1 for _ in (after / 'samples.jsonl').open())} samples: "
        + (
            "identical apart from timestamps and durations"
            if not found
            else f"{len(found)} differences"
        )
    )
    sys.exit(1 if found else 0)
