"""XTuner work dirs without XTuner: read the saved config as text, rename LoRA keys for peft.

XTuner saves a copy of the training config (a Python file) in its work dir. It is parsed with
``ast`` -- never executed -- for the LoRA settings, the prompt template, the system prompt and the
base model path. No torch here: key renaming works on names only.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from diag.types import ChatFormat

# The few XTuner PROMPT_TEMPLATE entries people use with chat models (xtuner/utils/templates.py).
PROMPT_TEMPLATES: dict[str, dict[str, str]] = {
    "internlm2_chat": {
        "SYSTEM": "<|im_start|>system\n{system}<|im_end|>\n",
        "INSTRUCTION": "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
    },
    "qwen_chat": {
        "SYSTEM": "<|im_start|>system\n{system}<|im_end|>\n",
        "INSTRUCTION": "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
    },
    "internlm_chat": {
        "SYSTEM": "<|System|>:{system}\n",
        "INSTRUCTION": "<|User|>:{input}<eoh>\n<|Bot|>:",
    },
    "default": {"SYSTEM": "<|System|>:{system}\n", "INSTRUCTION": "<|User|>:{input}\n<|Bot|>:"},
    "llama3_chat": {
        "SYSTEM": "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        "INSTRUCTION": (
            "<|start_header_id|>user<|end_header_id|>\n\n{input}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
    },
    "llama2_chat": {
        "SYSTEM": "[INST] <<SYS>>\n {system}\n<</SYS>>\n\n",
        "INSTRUCTION": "[INST] {input} [/INST]",
    },
}

SYSTEM_TEMPLATES = {
    "alpaca": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n"
    ),
}


@dataclass
class XTunerConfig:
    """What a saved XTuner config tells diag; any field may be unknown (None)."""

    path: Path | None = None
    lora: dict = field(default_factory=dict)  # r, lora_alpha, lora_dropout, target_modules
    chat: ChatFormat | None = None
    base: str | None = None
    problems: list[str] = field(default_factory=list)
    # the training data: files as written in the config, and how rows became conversations
    # (the last part of dataset_map_fn's name; None: XTuner's own conversation format)
    data_files: list[str] = field(default_factory=list)
    map_fn: str | None = None
    system: str | None = None
    evaluation_inputs: list[str] = field(default_factory=list)  # the author's watched questions


def _literal(node: ast.AST, names: dict[str, object]):
    """Value of a literal-ish node: constants, containers, dict(...) calls, known names/attrs."""
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        raise ValueError(node.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        if node.value.id == "PROMPT_TEMPLATE" and node.attr in PROMPT_TEMPLATES:
            return PROMPT_TEMPLATES[node.attr]
        if node.value.id == "SYSTEM_TEMPLATE" and node.attr in SYSTEM_TEMPLATES:
            return SYSTEM_TEMPLATES[node.attr]
        raise ValueError(f"{node.value.id}.{node.attr}")
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        # the copy mmengine saves in the work dir writes imported objects as dotted strings:
        # prompt_template = 'xtuner.utils.PROMPT_TEMPLATE.default'
        for prefix, table in (
            ("xtuner.utils.PROMPT_TEMPLATE.", PROMPT_TEMPLATES),
            ("xtuner.utils.SYSTEM_TEMPLATE.", SYSTEM_TEMPLATES),
        ):
            if node.value.startswith(prefix) and node.value[len(prefix) :] in table:
                return table[node.value[len(prefix) :]]
        return node.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        return {kw.arg: _safe(kw.value, names) for kw in node.keywords if kw.arg}
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):  # 'a' + 'b' string pieces
        return _literal(node.left, names) + _literal(node.right, names)
    return ast.literal_eval(node)


def _safe(node: ast.AST, names: dict[str, object]):
    try:
        return _literal(node, names)
    except (ValueError, TypeError, SyntaxError):
        return None


def parse_config(path: str | Path) -> XTunerConfig:
    """Read LoRA settings, prompt template, SYSTEM and base path from an XTuner config file."""
    path = Path(path)
    result = XTunerConfig(path=path)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        result.problems.append(f"cannot parse {path.name}: {exc}")
        return result
    names: dict[str, object] = {}
    for node in tree.body:  # top-level assignments, in order, like the config runner sees them
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                value = _safe(node.value, names)
                if value is not None:
                    names[target.id] = value
                if target.id == "model":
                    result.lora = _find_lora(node.value, names)
    template = names.get("prompt_template")
    system = names.get("SYSTEM")
    if isinstance(template, dict) and "INSTRUCTION" in template:
        result.chat = ChatFormat(
            system=system if isinstance(system, str) else "",
            template=template["INSTRUCTION"],
            system_template=template.get("SYSTEM"),
        )
    elif "prompt_template" in names or any(
        isinstance(n, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "prompt_template" for t in n.targets)
        for n in tree.body
    ):
        result.problems.append(
            "prompt_template not recognised; probing with the tokenizer template"
        )
    base = names.get("pretrained_model_name_or_path")
    result.base = base if isinstance(base, str) else None
    result.system = system if isinstance(system, str) and system else None
    inputs = names.get("evaluation_inputs")
    if isinstance(inputs, list):
        result.evaluation_inputs = [q for q in inputs if isinstance(q, str)]
    result.data_files, result.map_fn = _training_data(tree, names)
    return result


def _training_data(tree: ast.Module, names: dict[str, object]) -> tuple[list[str], str | None]:
    """The data files and the map function of ``train_dataset`` (or the dataloader's dataset).

    ``data_files`` may be a path, a list or ``dict(train=...)``; without it, XTuner's examples
    name the file in ``data_path`` or ``alpaca_en_path``. ``dataset_map_fn`` is a name
    (``alpaca_map_fn``, imported in the user's config), a dotted string (the copy mmengine saves)
    or None (rows already in XTuner's conversation format).
    """
    files: list[str] = []
    map_fn: str | None = None
    for sub in ast.walk(tree):
        if not isinstance(sub, ast.keyword):
            continue
        if sub.arg == "data_files" and not files:
            value = _safe(sub.value, names)
            value = value.get("train") if isinstance(value, dict) else value
            values = value if isinstance(value, list) else [value]
            files = [v for v in values if isinstance(v, str)]
        elif sub.arg == "dataset_map_fn" and map_fn is None:
            node = sub.value
            if isinstance(node, ast.Name):
                map_fn = node.id
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                map_fn = node.value.rsplit(".", 1)[-1]
            elif isinstance(node, ast.Attribute):
                map_fn = node.attr
    if not files:
        files = [v for k in ("data_path", "alpaca_en_path") if isinstance(v := names.get(k), str)]
    return files, map_fn


def _find_lora(node: ast.AST, names: dict[str, object]) -> dict:
    """The keywords of the ``lora=dict(...)`` inside ``model=dict(...)``, wherever it nests."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.keyword) and sub.arg == "lora":
            value = sub.value
            if isinstance(value, ast.Call):
                settings = {kw.arg: _safe(kw.value, names) for kw in value.keywords if kw.arg}
                keep = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias")
                return {k: v for k, v in settings.items() if k in keep and v is not None}
    return {}


def find_config(work_dir: Path) -> Path | None:
    """The saved config in an XTuner work dir: a top-level ``*.py`` that assigns ``model =``."""
    for candidate in sorted(work_dir.glob("*.py")):
        try:
            text = candidate.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if "model" in text and ("lora" in text or "SupervisedFinetune" in text):
            return candidate
    return None


def peft_key(xtuner_key: str) -> str | None:
    """XTuner LoRA key -> peft saved-adapter key; None for keys that are not LoRA weights.

    >>> peft_key("llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight")
    'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'
    """
    key = xtuner_key.removeprefix("module.").removeprefix("llm.")
    if ".lora_" not in key:
        return None
    return key.replace(".default.", ".")


def full_model_key(xtuner_key: str) -> str:
    """XTuner full fine-tune key -> transformers key (``llm.model.layers...`` -> ``model.layers...``)."""
    return xtuner_key.removeprefix("module.").removeprefix("llm.")


def lora_settings(keys_and_shapes: dict[str, tuple[int, ...]], config: dict) -> dict:
    """A peft LoraConfig dict from the adapter's tensors plus the config's alpha/dropout.

    r and target modules are read from the weights themselves, so they cannot disagree with them.
    """
    targets = sorted(
        {k.split(".lora_A")[0].rsplit(".", 1)[-1] for k in keys_and_shapes if ".lora_A" in k}
    )
    ranks = {shape[0] for k, shape in keys_and_shapes.items() if ".lora_A" in k and shape}
    r = ranks.pop() if len(ranks) == 1 else int(config.get("r") or 8)
    return {
        "r": r,
        "lora_alpha": config["lora_alpha"],  # KeyError: the caller asks for --lora-alpha
        "lora_dropout": 0.0,
        "target_modules": targets,
        "bias": config.get("bias", "none"),
        "task_type": "CAUSAL_LM",
    }
