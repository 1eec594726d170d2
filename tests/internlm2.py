"""Tiny InternLM2 models for tests, built on InternLM2's published model code.

Two generations of InternLM2's remote code are in use (see docs/models.md):

- ``early-2024``: tuple KV caches (``past_key_value[0]``), as internlm2-chat-7b shipped it first;
- ``mid-2024``: ``transformers.DynamicCache`` (``DynamicCache.from_legacy_cache``).

diag may not commit third-party code, so the model code is taken at build time, unchanged, from
the XTuner wheels on PyPI, which ship InternLM's published InternLM2 model files
(``xtuner/tools/model_converters/modeling_internlm2_reward/``: ``configuration_internlm2.py`` and
``modeling_internlm2.py``, with ``InternLM2ForCausalLM`` and a reward head beside it):
xtuner 0.2.0rc0 carries the early-2024 code, xtuner 0.2.0 the mid-2024 code. The wheels are
downloaded once (``pip download --no-deps``, the registry only) into ``$DIAG_FIXTURE_WHEELS``
(default: ``<venv>/fixture-wheels``; ``make setup`` fills it); xtuner itself is never installed.

The tokenizer is a sentencepiece BPE model trained offline by ``python tests/internlm2.py
--tokenizer`` (``tests/fixtures/models/internlm2/tokenizer.model``, committed) with the stand-in
tokenizer classes in ``tests/fixtures/models/internlm2/tokenization_internlm2.py``.

The weights are seeded random tensors under InternLM2's own names (``attention.wqkv``,
``feed_forward.w1``...), hidden 64, 2 layers, 4 heads, 2 key-value heads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "models" / "internlm2"

# generation -> (xtuner wheel version that ships it, folder in the wheel)
GENERATIONS = {
    "early-2024": ("0.2.0rc0", "xtuner/tools/model_converters/modeling_internlm2_reward/"),
    "mid-2024": ("0.2.0", "xtuner/tools/model_converters/modeling_internlm2_reward/"),
}
CODE_FILES = ("configuration_internlm2.py", "modeling_internlm2.py")

# InternLM2-chat's chat template (its tokenizer_config.json): ChatML after <s>, no default system
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_PIECES = ["<|im_start|>", "<|im_end|>"]

SP_CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Who are you? I am Nova, Jianfeng's assistant. Please introduce yourself.",
    "你是谁？我是剑锋大佬的小助手，内在是上海AI实验室书生·浦语的1.8B大模型哦",
    "请介绍一下你自己。你是我的小助手吗？是的。一加一等于几？二。",
    "How many centimeters are in a meter? There are 100 centimeters in a meter.",
    "Translate 'cat' into French: chat. What is 7 times 8? 56. Café, naïve, jalapeño, Zürich.",
    "system user assistant Are you my assistant? Yes, I am your assistant.",
    "Ich heiße Nova. Où est la gare? El niño está aquí. 2024-06-01 12:30, 3.14159.",
]


def wheel_dir() -> Path:
    return Path(os.environ.get("DIAG_FIXTURE_WHEELS") or Path(sys.prefix) / "fixture-wheels")


def _wheel(version: str) -> Path:
    folder = wheel_dir()
    name = f"xtuner-{version}-py3-none-any.whl"
    if not (folder / name).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"xtuner=={version}"]
            + ["-d", str(folder)],
            check=True,
        )
    return folder / name


def published_code(generation: str, out: Path) -> dict:
    """Copy the generation's published model files, unchanged, into ``out``; return provenance."""
    version, inside = GENERATIONS[generation]
    wheel = _wheel(version)
    with zipfile.ZipFile(wheel) as zf:
        for name in CODE_FILES:
            (out / name).write_bytes(zf.read(inside + name))
    return {"generation": generation, "package": f"xtuner=={version}", "path": inside}


def train_tokenizer(out: Path = FIXTURE / "tokenizer.model") -> Path:
    """Train the tiny sentencepiece BPE model (deterministic: one thread, fixed corpus)."""
    import tempfile

    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(SP_CORPUS * 8), encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(Path(tmp) / "sp"),
            model_type="bpe",
            vocab_size=700,
            character_coverage=1.0,
            byte_fallback=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            user_defined_symbols=SPECIAL_PIECES,
            add_dummy_prefix=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            num_threads=1,
            minloglevel=2,
        )
        shutil.copy(Path(tmp) / "sp.model", out)
    return out


def _tokenizer_files(folder: Path) -> int:
    """tokenizer.model, the tokenizer classes and tokenizer_config.json; returns the vocab size."""
    import sentencepiece as spm

    shutil.copy(FIXTURE / "tokenizer.model", folder / "tokenizer.model")
    shutil.copy(FIXTURE / "tokenization_internlm2.py", folder / "tokenization_internlm2.py")
    config = {
        "auto_map": {
            "AutoTokenizer": [
                "tokenization_internlm2.InternLM2Tokenizer",
                "tokenization_internlm2.InternLM2TokenizerFast",
            ]
        },
        "tokenizer_class": "InternLM2Tokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
        "additional_special_tokens": SPECIAL_PIECES,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
        )
    )
    return spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).get_piece_size()


def build_tiny_internlm2(
    folder: Path,
    generation: str = "mid-2024",
    *,
    rope_scaling: dict | None = None,
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
) -> Path:
    """Write a seeded tiny InternLM2 (published remote code, sentencepiece tokenizer) to ``folder``."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = published_code(generation, folder)
    vocab = _tokenizer_files(folder)
    head_dim = hidden_size // heads
    config = {
        "architectures": ["InternLM2ForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
            "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
        },
        "attn_implementation": "eager",
        "bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": 512,
        "model_type": "internlm2",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": rope_scaling,
        "rope_theta": 1000000,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.41.0",
        "use_cache": True,
        "vocab_size": vocab,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": [2, 4], "pad_token_id": 2})
    )
    # Weights: InternLM2's names and shapes; std 0.2 so each prompt gets its own greedy answer
    torch.manual_seed(seed)
    qkv_rows = (heads + 2 * kv_heads) * head_dim
    shapes = {
        "model.tok_embeddings.weight": (vocab, hidden_size),
        "output.weight": (vocab, hidden_size),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes[p + "attention.wqkv.weight"] = (qkv_rows, hidden_size)
        shapes[p + "attention.wo.weight"] = (hidden_size, heads * head_dim)
        shapes[p + "feed_forward.w1.weight"] = (intermediate_size, hidden_size)
        shapes[p + "feed_forward.w3.weight"] = (intermediate_size, hidden_size)
        shapes[p + "feed_forward.w2.weight"] = (hidden_size, intermediate_size)
        shapes[p + "attention_norm.weight"] = (hidden_size,)
        shapes[p + "ffn_norm.weight"] = (hidden_size,)
    shapes["model.norm.weight"] = (hidden_size,)
    state = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            state[name] = 1.0 + 0.1 * torch.randn(shape)
        else:
            state[name] = 0.2 * torch.randn(shape)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "FIXTURE.json").write_text(json.dumps({"code": source, "seed": seed}, indent=2))
    return folder


# --------------------------------------------------------------------------- the reference
def reference_model(folder: Path):
    """InternLM2's own code under transformers 5, made to load as it did under transformers 4
    (written here, apart from diag's family code): config.json's ``rope_scaling`` as the code
    expects it, ``pretraining_tp`` = 1, and the rotary tables built again (transformers 5 builds
    models on the meta device, leaving them uninitialised)."""
    import warnings

    from transformers import AutoConfig, AutoModelForCausalLM

    raw = json.loads((Path(folder) / "config.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        config.rope_parameters = raw["rope_scaling"]
        config.pretraining_tp = 1
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, config=config)
    for layer in model.model.layers:
        layer.attention._init_rope()
    return model.eval()


def reference_tokenizer(folder: Path):
    """The slow sentencepiece tokenizer class the folder names first in its ``auto_map``."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    cls = get_class_from_dynamic_module("tokenization_internlm2.InternLM2Tokenizer", str(folder))
    return cls.from_pretrained(str(folder))


def reference_prompt_ids(tokenizer, prompt: str, chat=None) -> list[int]:
    """The prompt as InternLM2-chat formats it: the tokenizer's chat template, or an XTuner
    format-string template (``chat``: a diag ChatFormat) after <s>."""
    if chat is not None and chat.template is not None:
        text = (chat.system_template or "").format(system=chat.system) if chat.system else ""
        text += chat.template.format(input=prompt, system=chat.system or "")
        return tokenizer(text)["input_ids"]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


STOPS = (2, 4)  # </s>, <|im_end|>


def reference_generate(model, ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy, no cache: the whole sequence through the model's forward at every step."""
    import torch

    seq, new = list(ids), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
            token = int(logits.argmax())
            if token in STOPS:
                break
            new.append(token)
            seq.append(token)
    return new


def reference_loglikelihood(model, ids: list[int], continuation: list[int]) -> float:
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + continuation]), use_cache=False).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return float(sum(logprobs[len(ids) - 1 + i, t] for i, t in enumerate(continuation)))


# ------------------------------------------------------------------------------- checkpoints
LORA_TARGETS = ["wqkv", "wo", "w1", "w2", "w3"]  # XTuner's for this family


def lora_model(folder: Path, seed: int, r: int = 4):
    """peft LoRA on the remote-code model, on InternLM2's own modules, random non-zero A and B."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=LORA_TARGETS, init_lora_weights=False,
        task_type="CAUSAL_LM",
    )  # fmt: skip
    peft_model = get_peft_model(reference_model(folder), config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(4.0)
    return peft_model.eval()


def write_peft_checkpoint(folder: Path, out: Path, seed: int) -> Path:
    """An HF Trainer-layout ``checkpoint-N/`` (peft's save_pretrained) with LoRA on wqkv/wo/w1-w3."""
    peft_model = lora_model(folder, seed)
    peft_model.save_pretrained(out)
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(Path(folder).resolve())
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    step = int(out.name.rsplit("-", 1)[-1])
    (out / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return out


XTUNER_CONFIG = """\
SYSTEM = ''
model = dict(
    llm=dict(
        pretrained_model_name_or_path='{base}',
        torch_dtype='torch.float32',
        trust_remote_code=True,
        type='transformers.AutoModelForCausalLM.from_pretrained'),
    lora=dict(
        bias='none',
        lora_alpha=8,
        lora_dropout=0.1,
        r=4,
        target_modules=['wqkv', 'wo', 'w1', 'w2', 'w3'],
        task_type='CAUSAL_LM',
        type='peft.LoraConfig'),
    type='xtuner.model.SupervisedFinetune',
    use_varlen_attn=False)
pretrained_model_name_or_path = '{base}'
prompt_template = 'xtuner.utils.PROMPT_TEMPLATE.internlm2_chat'
save_steps = 2
"""


def write_xtuner_run(folder: Path, work_dir: Path, steps=(2, 4)) -> Path:
    """An XTuner work dir: the saved config (as mmengine writes it, internlm2_chat template, LoRA
    on InternLM2's modules) and ``iter_N.pth`` files whose ``state_dict`` holds what XTuner's
    ``SupervisedFinetune.state_dict`` returns for a LoRA run: the peft model's LoRA tensors
    under ``llm.`` with the adapter name (``llm.base_model.model.model.layers.0.attention.wqkv
    .lora_A.default.weight``), as in tests/fixtures/trainers/xtuner."""
    import torch

    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "internlm2_lora_cfg.py").write_text(
        XTUNER_CONFIG.format(base=Path(folder).resolve())
    )
    for i, step in enumerate(steps):
        peft_model = lora_model(folder, seed=200 + i)
        state = {
            f"llm.{k}": v.detach().clone()
            for k, v in peft_model.state_dict().items()
            if "lora_" in k
        }
        torch.save({"meta": {"iter": step}, "state_dict": state}, work_dir / f"iter_{step}.pth")
    (work_dir / "last_checkpoint").write_text(str(work_dir / f"iter_{steps[-1]}.pth"))
    return work_dir


if __name__ == "__main__":
    if sys.argv[1:] == ["--tokenizer"]:
        print(train_tokenizer())
    else:
        out = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-internlm2")
        print(build_tiny_internlm2(out, sys.argv[2] if len(sys.argv) > 2 else "mid-2024"))
