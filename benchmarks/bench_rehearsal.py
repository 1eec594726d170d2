"""Self-rehearsal on the embedded SmolLM2: answering the prompt bank at a fixed 192-token limit
then dropping what was cut (before issue 28) vs answering it whole within data.max_length.

    .venv/bin/python benchmarks/bench_rehearsal.py [--repeats 1] [--max-length 256] [--out FILE]

In one process, on one loaded base, arms alternating:

  before   every bank prompt answered at up to 192 new tokens, answers that hit it dropped
  after    ``self_rehearsal`` as it is (each answer generated to its end within the room a
           ``--max-length`` training example leaves after its prompt; kept only if it fits whole),
           in a fresh DIAG_HOME so nothing is cached

Prints per arm: wall seconds, prompts asked, answers kept, and, for the ``after`` arm, the bank
prompts whose answers did not fit (``--out`` keeps every answer's length).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

SYSTEM = "You are a helpful assistant."  # the demo's training system prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own; on "
                        "a CPU other jobs keep busy, 1 avoids OpenMP spin-waiting)")  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from diag.train.general_data import general_prompt_bank, self_rehearsal

    from diag.backend.hf import HFBackend
    from diag.types import ChatFormat, GenerationConfig

    lm = HFBackend.load(None, device="cpu")
    chat = ChatFormat(system=SYSTEM)
    bank = general_prompt_bank()
    prompts = [row["prompt"] for row in bank]
    rows = []
    for repeat in range(args.repeats):
        started = time.perf_counter()
        gens = lm.generate(prompts, GenerationConfig(max_new_tokens=192, batch_size=64, chat=chat))
        before = {
            "arm": "before",
            "repeat": repeat,
            "seconds": round(time.perf_counter() - started, 1),
            "asked": len(prompts),
            "kept": sum(not g.hit_limit and bool(g.text.strip()) for g in gens),
            "load_average": os.getloadavg()[0],
        }
        print(json.dumps(before), flush=True)
        with tempfile.TemporaryDirectory() as home:
            os.environ["DIAG_HOME"] = home
            started = time.perf_counter()
            kept = self_rehearsal(lm, chat, args.max_length)
            seconds = time.perf_counter() - started
        kept_ids = {c["id"] for c in kept}
        after = {
            "arm": "after",
            "repeat": repeat,
            "seconds": round(seconds, 1),
            "asked": len(prompts),
            "kept": len(kept),
            "load_average": os.getloadavg()[0],
            "not_fitting": [row["id"] for row in bank if row["id"] not in kept_ids],
        }
        print(json.dumps(after), flush=True)
        rows += [before, after]
        before["answer_tokens"] = {row["id"]: g.new_tokens for row, g in zip(bank, gens)}
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
