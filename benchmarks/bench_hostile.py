"""Issue 25 benchmark: what the hostile-input checks cost on honest files, and what they save.

    .venv/bin/python benchmarks/bench_hostile.py [--model-dir DIR]

Measures (other processes share the cores, so compare ratios):
- the pickle allocation scan (``check_allocations``) on a full-model ``pytorch_model.bin`` vs
  loading that file with ``torch.load(weights_only=True)``;
- a 2 KB ``bytearray(4e9)`` bomb: ``safe_load`` time and the child's peak RSS (refused, bounded);
- the safetensors header check vs the content hash the sweep fingerprints with, on the same file;
- grading every shipped general item with the ``regex`` engine (time-bounded) vs Python's ``re``.

MODEL_DIR: a Hugging Face model folder with ``model.safetensors`` (default: the embedded
SmolLM2's converted cache, ``~/.cache/diag/models/smollm2-135m-instruct``).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BOMB = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from diag.backend.checkpoints import safe_load
from diag.errors import DiagError
started = time.perf_counter()
try:
    safe_load(sys.argv[1], restricted=True)
    outcome = "loaded"
except DiagError:
    outcome = "refused"
except MemoryError:
    outcome = "MemoryError at the 3 GB bound"
took = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(f"{outcome} in {took:.3f} s, peak RSS {peak} MB")
"""


class _Bomb:
    def __reduce__(self):
        return (bytearray, (4_000_000_000,))


def _timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    default = Path.home() / ".cache" / "diag" / "models" / "smollm2-135m-instruct"
    parser.add_argument("--model-dir", type=Path, default=default)
    args = parser.parse_args()

    import torch
    from diag.diagnostics.cache import file_hash
    from safetensors.torch import load_file

    from diag.backend.pickle_scan import check_allocations
    from diag.formats.safetensors_header import check_header

    weights = args.model_dir / "model.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "pytorch_model.bin"
        torch.save(load_file(weights), binary)
        size = binary.stat().st_size / 1e6
        scan = _timed(lambda: check_allocations(binary))
        load = _timed(lambda: torch.load(binary, map_location="cpu", weights_only=True), 1)
        print(f"allocation scan of a {size:.0f} MB .bin: {scan * 1e3:.1f} ms; load {load:.2f} s")
        bomb = Path(tmp) / "iter_1.pth"
        torch.save({"state_dict": {"w": torch.ones(2, 2)}, "meta": _Bomb()}, bomb)
        child = subprocess.run(
            [sys.executable, "-c", BOMB, str(bomb)], capture_output=True, text=True, check=False
        )
        print(f"{bomb.stat().st_size} B bytearray(4e9) bomb: {child.stdout.strip()}")

    mb = weights.stat().st_size / 1e6
    header = _timed(lambda: check_header(weights, 10**6))
    digest = _timed(lambda: file_hash(weights), 1)
    print(f"header check of a {mb:.0f} MB safetensors: {header * 1e3:.2f} ms; hash {digest:.2f} s")

    from diag.probes.items import load_builtin
    from diag.probes.text import matches_any

    items = load_builtin("general").items
    answers = ["The capital of France is Paris, and 7 times 8 is 56.", "I don't know."] * 5

    def with_re():
        for item in items:
            for answer in answers:
                any(re.search(p, answer, flags=re.IGNORECASE) for p in item.accept)

    def with_regex():
        for item in items:
            for answer in answers:
                matches_any(answer, item.accept)

    n = len(items) * len(answers)
    print(
        f"grading {n} answers: re {_timed(with_re) * 1e3:.1f} ms, "
        f"regex with a time bound {_timed(with_regex) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
