"""What a run folder says about itself, read from the files each trainer writes (no torch here).

Each reader fills the parts of :class:`RunFacts` its trainer records: the base model, the prompt
format it trained with, LoRA settings, losses, and how many optimiser steps an epoch had.
Sources (see ``docs/formats.md``): diag's own ``diag-run.json``; HF Trainer's
``trainer_state.json``; XTuner's saved config ``*.py``; ms-swift's ``args.json``; torchtune's
``torchtune_config.yaml`` and ``logs/log_*.txt``; axolotl's ``README.md`` front matter.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from diag.files import load_yaml, loads_json
from diag.types import ChatFormat

log = logging.getLogger("diag")

MANIFEST = "diag-run.json"

# Trainer template names whose prompt format is known exactly. ms-swift's and LLaMA-Factory's
# ``chatml`` put no system block in front of the user turn unless a system prompt is given
# (swift/llm/template/template/... ``chatml``; LLaMA-Factory src/llamafactory/data/template.py).
CHATML_USER = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
CHATML_SYSTEM = "<|im_start|>system\n{system}<|im_end|>\n"
NAMED_TEMPLATES = {"chatml": (CHATML_SYSTEM, CHATML_USER)}


@dataclass
class RunFacts:
    """A run's own records; None/empty where its trainer does not say."""

    base: str | None = None
    base_source: str | None = None  # the file (and key) the base came from
    chat: ChatFormat | None = None
    manifest: dict | None = None
    xtuner_config: Path | None = None
    lora: dict = field(default_factory=dict)
    train_loss: list[list[float]] = field(default_factory=list)  # [[step, loss], ...]
    eval_loss: list[list[float]] = field(default_factory=list)
    steps_per_epoch: int | None = None
    trainer: str | None = None
    notes: list[str] = field(default_factory=list)
    data: object = None  # diag.formats.recorded_data.DataRecord: what it says it trained on


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when it is missing, unreadable or not an object."""
    if not path.is_file():  # a FIFO or a /dev/zero link would block or never end
        return None
    try:
        data = loads_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def losses(state: dict) -> tuple[list[list[float]], list[list[float]]]:
    """Train and eval loss points from an HF ``trainer_state.json``'s ``log_history``."""
    train, evals = [], []
    history = state.get("log_history")
    for entry in history if isinstance(history, list) else []:
        step = entry.get("step") if isinstance(entry, dict) else None
        if not isinstance(step, (int, float)):
            continue
        if isinstance(entry.get("loss"), (int, float)):
            train.append([step, float(entry["loss"])])
        if isinstance(entry.get("eval_loss"), (int, float)):
            evals.append([step, float(entry["eval_loss"])])
    return train, evals


def chat_for_template(name: str, system: str | None, where: str, notes: list[str]):
    """The ChatFormat of a trainer's named template, or None (tokenizer template) with a note."""
    if name in NAMED_TEMPLATES:
        system_template, user = NAMED_TEMPLATES[name]
        return ChatFormat(system=system or "", template=user, system_template=system_template)
    notes.append(
        f"{where}: template '{name}' is not one diag knows; probing with the tokenizer's chat "
        "template (pass --template if it differs)"
    )
    return None


def read_run(run_dir: Path) -> RunFacts:
    """Everything ``run_dir`` records about its run, from whichever trainers' files are there."""
    facts = RunFacts()
    if not run_dir.is_dir():
        return facts
    for reader in (
        _diag_manifest,
        _trainer_state,
        _xtuner,
        _swift,
        _torchtune,
        _llamafactory,
        _axolotl,
    ):
        reader(run_dir, facts)
    from diag.formats.recorded_data import read_data_record

    facts.data = read_data_record(run_dir, facts.trainer, facts.xtuner_config)
    return facts


def _set_base(facts: RunFacts, base, source: str) -> None:
    if facts.base is None and isinstance(base, str) and base:
        facts.base, facts.base_source = base, source


def _diag_manifest(run_dir: Path, facts: RunFacts) -> None:
    manifest = read_json(run_dir / MANIFEST)
    if manifest:
        facts.manifest, facts.trainer = manifest, "diag"
        _set_base(facts, manifest.get("base"), f"{MANIFEST} base")
        if manifest.get("chat") is not None:
            facts.chat = ChatFormat.from_dict(manifest["chat"])


def _trainer_state(run_dir: Path, facts: RunFacts) -> None:
    state = read_json(run_dir / "trainer_state.json")
    if state:
        facts.train_loss, facts.eval_loss = losses(state)


def _xtuner(run_dir: Path, facts: RunFacts) -> None:
    from diag.formats.xtuner import find_config, parse_config

    config_path = find_config(run_dir)
    if config_path is None:
        return
    parsed = parse_config(config_path)
    facts.trainer = facts.trainer or "xtuner"
    facts.xtuner_config = config_path
    facts.lora = parsed.lora
    facts.chat = facts.chat or parsed.chat
    _set_base(facts, parsed.base, f"{config_path.name} pretrained_model_name_or_path")
    for problem in parsed.problems:
        log.warning("%s: %s", config_path, problem)
    if not facts.train_loss:
        facts.train_loss = _xtuner_losses(run_dir)


def _xtuner_losses(work_dir: Path) -> list[list[float]]:
    """mmengine's ``<timestamp>/vis_data/scalars.json``: one JSON object per logged iteration."""
    points: dict[int, float] = {}
    for scalars in sorted(work_dir.glob("*/vis_data/scalars.json")):
        try:
            lines = scalars.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            step = entry.get("iter", entry.get("step")) if isinstance(entry, dict) else None
            if isinstance(step, int) and isinstance(entry.get("loss"), (int, float)):
                points[step] = float(entry["loss"])
    return [[s, points[s]] for s in sorted(points)]


def _swift(run_dir: Path, facts: RunFacts) -> None:
    """ms-swift's ``output/vN-<date>-<time>/args.json``: ``model``, ``template``, ``system``."""
    args = read_json(run_dir / "args.json")
    if not args or "model" not in args or "template" not in args:
        return
    facts.trainer = facts.trainer or "ms-swift"
    _set_base(facts, args.get("model"), "args.json model")
    if facts.chat is None and isinstance(args.get("template"), str):
        facts.chat = chat_for_template(
            args["template"], args.get("system"), "args.json", facts.notes
        )


def _torchtune(run_dir: Path, facts: RunFacts) -> None:
    """torchtune's ``torchtune_config.yaml`` (base: ``checkpointer.checkpoint_dir``) and logs."""
    config_path = run_dir / "torchtune_config.yaml"
    if not config_path.is_file():
        return
    import yaml

    try:
        config = load_yaml(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        facts.notes.append(f"torchtune_config.yaml is unreadable: {str(exc).splitlines()[0]}")
        return
    if not isinstance(config, dict):
        return
    facts.trainer = facts.trainer or "torchtune"
    checkpointer = config.get("checkpointer")
    if isinstance(checkpointer, dict):
        _set_base(facts, checkpointer.get("checkpoint_dir"), "torchtune_config.yaml checkpointer")
    model = config.get("model")
    if isinstance(model, dict):
        facts.lora = _torchtune_lora(model)
    points = _torchtune_losses(run_dir)
    if points and not facts.train_loss:
        facts.train_loss = points
    epochs = config.get("epochs")
    if points and isinstance(epochs, int) and epochs > 0:
        last = int(points[-1][0])
        if last % epochs == 0:  # a finished run: every epoch took the same number of steps
            facts.steps_per_epoch = last // epochs


def _torchtune_lora(model: dict) -> dict:
    """LoRA rank/alpha and the attention shape from a torchtune ``model:`` section."""
    lora = {}
    if isinstance(model.get("lora_rank"), int):
        lora["r"] = model["lora_rank"]
    if isinstance(model.get("lora_alpha"), (int, float)):
        lora["lora_alpha"] = model["lora_alpha"]
    heads, kv_heads, dim = model.get("num_heads"), model.get("num_kv_heads"), model.get("embed_dim")
    if all(isinstance(v, int) for v in (heads, dim)):
        kv_heads = kv_heads if isinstance(kv_heads, int) else heads
        head_dim = model.get("head_dim") if isinstance(model.get("head_dim"), int) else dim // heads
        lora["heads"] = [heads, kv_heads, head_dim]
    return lora


# torchtune -> peft names for LoRA weights (torchtune/models/convert_weights.py: _FROM_HF,
# _TO_PEFT_KEYS and tune_to_peft_adapter_weights, 0.6.1)
TORCHTUNE_MODULES = {
    "attn.q_proj": "self_attn.q_proj",
    "attn.k_proj": "self_attn.k_proj",
    "attn.v_proj": "self_attn.v_proj",
    "attn.output_proj": "self_attn.o_proj",
    "mlp.w1": "mlp.gate_proj",
    "mlp.w2": "mlp.down_proj",
    "mlp.w3": "mlp.up_proj",
}


def torchtune_peft_key(key: str) -> str | None:
    """``layers.0.attn.q_proj.lora_a.weight`` -> peft's saved-adapter key; None if not LoRA.

    >>> torchtune_peft_key("layers.3.attn.output_proj.lora_b.weight")
    'base_model.model.model.layers.3.self_attn.o_proj.lora_B.weight'
    >>> torchtune_peft_key("output.lora_a.weight")
    'base_model.model.lm_head.lora_A.weight'
    """
    match = re.match(r"^(?:layers\.(\d+)\.(.+)|output)\.lora_([ab])\.weight$", key)
    if not match:
        return None
    layer, module, which = match.groups()
    side = which.upper()
    if layer is None:
        return f"base_model.model.lm_head.lora_{side}.weight"
    if module not in TORCHTUNE_MODULES:
        return None
    return f"base_model.model.model.layers.{layer}.{TORCHTUNE_MODULES[module]}.lora_{side}.weight"


_TT_LINE = re.compile(r"Step (\d+) \| .*?\bloss:([-+0-9.eE]+)")


def _torchtune_losses(run_dir: Path) -> list[list[float]]:
    """torchtune's DiskLogger lines, ``Step 12 | loss:1.23 lr:...``, in ``logs/log_*.txt``."""
    points: dict[int, float] = {}
    for log_file in sorted(run_dir.glob("logs/log_*.txt")):
        try:
            text = log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for match in _TT_LINE.finditer(text):
            points[int(match.group(1))] = float(match.group(2))
    return [[s, points[s]] for s in sorted(points)]


def _front_matter(readme: Path) -> dict | None:
    """The YAML front matter of a model card (``README.md``), or None."""
    try:
        text = readme.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.match(r"---\n(.*?)\n---", text, re.S)
    if not match:
        return None
    import yaml

    try:
        front = load_yaml(match.group(1))
    except yaml.YAMLError:
        return None
    return front if isinstance(front, dict) else None


def _llamafactory(run_dir: Path, facts: RunFacts) -> None:
    """LLaMA-Factory: model cards tagged ``llama-factory``; the template it trained with is saved
    as the tokenizer's ``chat_template.jinja`` (its ``template:`` setting is recorded nowhere else;
    it puts no system block in front of the user turn unless the data has one)."""
    cards = [run_dir / "README.md", *sorted(run_dir.glob("checkpoint-*/README.md"))]
    front = next((f for f in map(_front_matter, cards) if f), None)
    if front is None or "llama-factory" not in (front.get("tags") or []):
        return
    facts.trainer = facts.trainer or "llama-factory"
    _set_base(facts, front.get("base_model"), "README.md base_model")
    if facts.chat is not None:
        return
    for jinja in [
        run_dir / "chat_template.jinja",
        *sorted(run_dir.glob("checkpoint-*/chat_template.jinja")),
    ]:
        try:
            facts.chat = ChatFormat(chat_template=jinja.read_text(encoding="utf-8"))
            return
        except (OSError, UnicodeDecodeError):
            continue


def _axolotl(run_dir: Path, facts: RunFacts) -> None:
    """axolotl's model card in the output folder: front matter ``base_model`` (LoRA runs) and the
    training yaml it embeds (``base_model``, ``chat_template``)."""
    readme = run_dir / "README.md"
    try:
        text = readme.read_text(encoding="utf-8", errors="replace") if readme.is_file() else ""
    except OSError:
        return
    if "axolotl version" not in text and "axolotl" not in str(_front_matter(readme) or {}):
        return
    facts.trainer = facts.trainer or "axolotl"
    front = _front_matter(readme) or {}
    _set_base(facts, front.get("base_model"), "README.md base_model")
    match = re.search(r"axolotl version: .*?```yaml\n(.*?)```", text, re.S)
    if not match:
        return
    import yaml

    try:
        config = load_yaml(match.group(1))
    except yaml.YAMLError:
        return
    if not isinstance(config, dict):
        return
    _set_base(facts, config.get("base_model"), "README.md axolotl config base_model")
    template = config.get("chat_template")
    if facts.chat is None and template not in (None, "tokenizer_default"):
        # axolotl sets the named template on the tokenizer it saves with the output
        jinja = run_dir / "chat_template.jinja"
        if jinja.is_file():
            facts.chat = ChatFormat(chat_template=jinja.read_text(encoding="utf-8"))
