"""Check the transformers-5 reference against InternLM2's code in its own environment.

The test suite's reference (tests/internlm2.py ``reference_model``) runs InternLM2's published
code under transformers 5 after three repairs (rope_scaling, pretraining_tp, rotary tables). This
script shows those repairs reproduce the code's behaviour under the transformers it was written
for: run it twice, once with transformers 4.x first on the path, and compare the printed JSON.

    pip install --no-deps --target /tmp/tf4 transformers==4.48.0 tokenizers==0.21.0 \\
        huggingface_hub==0.27.1
    PYTHONPATH=/tmp/tf4 .venv/bin/python benchmarks/check_internlm2_transformers4.py > tf4.json
    .venv/bin/python benchmarks/check_internlm2_transformers4.py --diag > tf5.json
    diff tf4.json tf5.json && echo same

Under transformers 4 the model is loaded plainly (``trust_remote_code=True``, nothing repaired)
with the slow tokenizer; with ``--diag`` the answers come from diag's backend (converted Llama).
Greedy, no cache, 12 new tokens, rope_scaling null and dynamic, both code generations.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

PROMPTS = [
    "Who are you?",
    "你是谁？",
    "What is the capital of France?",
    "Please introduce yourself.",
]
VARIANTS = [
    ("early-2024", None),
    ("early-2024", {"type": "dynamic", "factor": 2.0}),
    ("mid-2024", None),
    ("mid-2024", {"type": "dynamic", "factor": 2.0}),
]


def main() -> None:
    import torch
    import transformers
    from internlm2 import build_tiny_internlm2, reference_generate, reference_tokenizer

    use_diag = "--diag" in sys.argv
    out = {"transformers": transformers.__version__.split(".")[0], "runs": []}
    for generation, rope in VARIANTS:
        folder = Path(tempfile.mkdtemp(prefix="internlm2-tf-check-"))
        build_tiny_internlm2(folder, generation, rope_scaling=rope)
        tokenizer = reference_tokenizer(folder)
        if use_diag:
            from diag.backend.hf import HFBackend
            from diag.types import ChatFormat, GenerationConfig

            lm = HFBackend.load(folder, trust_remote_code=True, device="cpu")
            config = GenerationConfig(max_new_tokens=12, batch_size=4, chat=ChatFormat())
            answers = [g.text for g in lm.generate(PROMPTS, config)]
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
            answers = []
            for prompt in PROMPTS:
                text = tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                new = reference_generate(model, ids, 12)
                answers.append(tokenizer.decode(new, skip_special_tokens=True).strip())
        out["runs"].append({"generation": generation, "rope_scaling": rope, "answers": answers})
        torch.manual_seed(0)
    out.pop("transformers")
    print(json.dumps(out, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
