"""Self-rehearsal on the embedded SmolLM2: answering the prompt bank at a fixed 192-token limit
then dropping what was cut (before issue 28) vs answering it whole within data.max_length, in
batches of 64 (the probes' CPU batch) or in one batch (as it is now).

    .venv/bin/python benchmarks/bench_rehearsal.py [--repeats 1] [--max-length 256] [--out FILE]
        [--arms before,batches64,after,english]

In one process, on one loaded base, arms alternating:

  before     every bank prompt answered at up to 192 new tokens, answers that hit it dropped
  batches64  ``self_rehearsal`` in batches of 64 (each answer generated to its end within the room
             a ``--max-length`` training example leaves after its prompt; kept only if it fits
             whole), in a fresh DIAG_HOME so nothing is cached
  after      ``self_rehearsal`` as it is: the same, the bank in as few batches as memory allows
  english    ``after`` on the bank's English prompts only (``mix.rehearsal_languages: [en]``, as
             the demo does)

Prints per arm: wall seconds, prompts asked, answers kept, whether the kept answers equal the
first self_rehearsal arm's, and the bank prompts whose answers did not fit (``--out`` keeps every
answer's length).
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
    parser.add_argument("--arms", default="before,batches64,after")
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
    arms = args.arms.split(",")
    for repeat in range(args.repeats):
        first_kept = None
        for arm in arms:
            started = time.perf_counter()
            if arm == "before":
                config = GenerationConfig(max_new_tokens=192, batch_size=64, chat=chat)
                gens = lm.generate(prompts, config)
                row = {
                    "kept": sum(not g.hit_limit and bool(g.text.strip()) for g in gens),
                    "answer_tokens": {r["id"]: g.new_tokens for r, g in zip(bank, gens)},
                }
            else:
                languages = ["en"] if arm == "english" else None
                asked = general_prompt_bank(languages)
                with tempfile.TemporaryDirectory() as home:
                    os.environ["DIAG_HOME"] = home
                    batch = 64 if arm == "batches64" else None
                    kept = self_rehearsal(
                        lm, chat, args.max_length, batch_size=batch, languages=languages
                    )
                kept_ids = {c["id"] for c in kept}
                first_kept = kept if first_kept is None else first_kept
                ids = {r["id"] for r in asked}  # the first arm's answers to the same prompts
                row = {
                    "asked": len(asked),
                    "kept": len(kept),
                    "same_kept_as_first": kept == [c for c in first_kept if c["id"] in ids],
                    "not_fitting": [r["id"] for r in asked if r["id"] not in kept_ids],
                }
            row = {
                "arm": arm,
                "repeat": repeat,
                "seconds": round(time.perf_counter() - started, 1),
                "asked": len(prompts),
                **row,  # its own "asked" where it asks part of the bank
                "load_average": os.getloadavg()[0],
            }
            print(json.dumps({k: v for k, v in row.items() if k != "answer_tokens"}), flush=True)
            rows.append(row)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
