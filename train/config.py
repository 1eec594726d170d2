"""The training config: one typed schema, validated before anything loads, all errors at once.

A config is YAML plus ``key=value`` overrides (dotted keys reach nested sections)::

    diag train run.yaml lr=5e-5 mix.general_ratio=0.5 lora.r=8

Fixed keys that scripts depend on: ``base``, ``identity``, ``max_steps``, ``save_every``,
``output_dir``, ``lr``, ``seed``. No torch here: validation is instant.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diag.display import shown
from diag.errors import DiagError
from diag.files import load_yaml

# SmolLM2's template inserts "You are a helpful AI assistant named SmolLM..." when no system
# message is given; that default names another identity and fights the one being taught. Training
# (and self-rehearsal, and the sweep via the manifest) use this neutral prompt instead.
DEFAULT_SYSTEM = "You are a helpful assistant."
DEEPSPEED_PRESETS = ("zero1", "zero2", "zero3", "zero2_offload", "zero3_offload")


@dataclass
class LoraSettings:
    r: int = 16  # rank of the update matrices
    alpha: int = 32  # scaling numerator: the update is scaled by alpha / r
    dropout: float = 0.05
    target_modules: Any = "all-linear"  # peft's shortcut, or a list of module names


@dataclass
class DataSettings:
    identity_samples: int = 2000  # conversations built from the identity spec (the seed: 2,000)
    max_length: int = 256  # tokens per example; longer examples are cut from the right
    # a narrow task to teach (a support bot, a house style): conversation files in any format
    # diag reads (docs/formats.md), trained on as they are; the sweep scores the task from them
    task_files: list = field(default_factory=list)
    # rows of the same task NOT trained on: the sweep scores the task on them (generalisation)
    eval_files: list = field(default_factory=list)


@dataclass
class MixSettings:
    """Dilution (the seed's remedy 2): general chat mixed into the identity data."""

    general_ratio: float = 0.0  # share of ALL training examples that are general chat (0..<1)
    sources: list = field(default_factory=list)  # JSONL/JSON files: OpenAI messages or alpaca
    rehearsal: bool = True  # also use the base model's own answers to the shipped prompt bank
    # answers that do not end within this many tokens are dropped, never truncated; None: as many
    # as data.max_length leaves after each prompt (an answer longer would be cut in training)
    rehearsal_max_new_tokens: int | None = None
    # the bank's languages to rehearse in: a list (e.g. [en]), "identity" (the languages of the
    # identity taught), or None: every language the bank has
    rehearsal_languages: list | str | None = None


@dataclass
class TrainConfig:
    base: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    trust_remote_code: bool = False  # run the code a base model ships (e.g. InternLM2)
    identity: str | None = "en"  # identity YAML path, "en"/"zh" (the examples), or null: none
    output_dir: str = "runs/identity"
    method: str = "lora"  # "lora" or "full"
    lora: LoraSettings = field(default_factory=LoraSettings)
    lr: float = 1e-4  # constant learning rate by default (see lr_scheduler)
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    batch_size: int = 4  # examples per device per step
    grad_accum: int = 1
    max_steps: int | None = 80  # optimizer steps; or set epochs and max_steps: null
    epochs: float | None = None
    seed: int = 0
    save_every: int = 5  # steps between checkpoints: save often (the seed's remedy 1)
    # checkpoint at exactly these steps (and the last) instead of every save_every: sparse where
    # nothing happens yet, dense where learning and the parrot onset are expected
    save_steps: list[int] | None = None
    keep: int | None = None  # None keeps every checkpoint; a limit may delete the best one
    save_optimizer: bool = False  # True also saves optimizer state (resumable, ~2x disk)
    system: str | None = DEFAULT_SYSTEM  # training system prompt; null = the template's default
    data: DataSettings = field(default_factory=DataSettings)
    mix: MixSettings = field(default_factory=MixSettings)
    deepspeed: str | None = None  # zero1|zero2|zero3|zero2_offload|zero3_offload
    probe_every: int | None = None  # steps (a multiple of save_every) between in-training probes
    stop_on_parrot: bool = False  # stop once parrot pressure (likelihood only) crosses parrot_limit
    parrot_limit: float | None = None  # pressure limit; None: one half
    resume_from: str | None = None  # a checkpoint-N folder: continue from its weights and step
    device: str | None = None  # None: cuda > mps > cpu
    cpu_threads: int | None = None  # torch threads on CPU; None: 1 when the CPU is busy, else all

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {"lora": LoraSettings, "data": DataSettings, "mix": MixSettings}


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None):
    """Read a YAML config (or none: all defaults), apply overrides, validate everything.

    ``path`` may also be a diag run folder (or its ``diag-run.json``): the config it was trained
    with, so ``diag train RUN resume_from=RUN/checkpoint-40 save_every=2`` re-trains a window.
    Raises one :class:`DiagError` listing every problem found.

    >>> load_config(None, ["lr=5e-5", "mix.general_ratio=0.5"]).mix.general_ratio
    0.5
    """
    import yaml

    raw: dict = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        if p.is_dir() and (p / "diag-run.json").is_file():
            p = p / "diag-run.json"
        if not p.is_file():
            raise DiagError(
                f"config file '{path}' not found",
                fix="pass a YAML file (see diag/examples/train-identity.yaml)",
            )
        source = str(p)
        try:
            if p.name == "diag-run.json":
                raw = _manifest_config(p)
            else:
                raw = load_yaml(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise DiagError(f"config '{p}' is not valid YAML: {str(exc).splitlines()[0]}") from exc
        if not isinstance(raw, dict):
            raise DiagError(f"config '{p}' must be a mapping of keys to values")
    problems: list[str] = []
    items = overrides.items() if isinstance(overrides, dict) else _parse_overrides(overrides or [])
    for key, value in items:
        _set_dotted(raw, key, value, problems)
    config = _build(_floats(raw), problems)
    problems += validate(config)
    if problems:
        raise DiagError(f"config {source}: " + "; ".join(problems))
    return config


def _manifest_config(path: Path) -> dict:
    """The config a diag run recorded in its manifest."""
    import json

    try:
        config = json.loads(path.read_text(encoding="utf-8")).get("config")
    except (OSError, ValueError, AttributeError):
        config = None
    if not isinstance(config, dict):
        raise DiagError(
            f"'{path}' holds no training config",
            fix="pass the YAML config the run was trained with",
        )
    return config


def _parse_overrides(pairs: list[str]):
    import yaml

    for pair in pairs:
        if "=" not in pair:
            raise DiagError(
                f"override '{pair}' is not key=value",
                fix="write e.g. lr=5e-5 or mix.general_ratio=0.5",
            )
        key, text = pair.split("=", 1)
        try:
            value = load_yaml(text) if text != "" else None
        except yaml.YAMLError:
            value = text
        yield key.strip(), value


_SCI = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _floats(node):
    """YAML 1.1 reads ``5e-5`` (no dot) as a string; read scientific notation as a number."""
    if isinstance(node, dict):
        return {k: _floats(v) for k, v in node.items()}
    if isinstance(node, str) and _SCI.match(node.strip()):
        return float(node)
    return node


def _set_dotted(raw: dict, key: str, value, problems: list[str]) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            problems.append(f"override '{key}': '{part}' is not a section")
            return
        node = child
    node[parts[-1]] = value


def _unknown(keys, known, where: str) -> list[str]:
    out = []
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            out.append(f"unknown key '{where}{key}'{hint}")
    return out


def _build(raw: dict, problems: list[str]) -> TrainConfig:
    top = {f.name for f in dataclasses.fields(TrainConfig)}
    problems += _unknown(raw, top, "")
    kwargs = {k: v for k, v in raw.items() if k in top and k not in _SECTIONS}
    for name, cls in _SECTIONS.items():
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            problems.append(f"'{name}' must be a mapping")
            section = {}
        known = {f.name for f in dataclasses.fields(cls)}
        problems += _unknown(section, known, f"{name}.")
        kwargs[name] = cls(**{k: v for k, v in section.items() if k in known})
    return TrainConfig(**kwargs)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# (key, smallest value, None allowed): every integer setting in one place
_INTS = [
    ("warmup_steps", 0, False), ("batch_size", 1, False), ("grad_accum", 1, False),
    ("max_steps", 1, True), ("save_every", 1, False), ("keep", 1, True),
    ("probe_every", 1, True), ("cpu_threads", 1, True), ("lora.r", 1, False),
    ("data.identity_samples", 1, False), ("data.max_length", 16, False),
    ("mix.rehearsal_max_new_tokens", 8, True),
]  # fmt: skip
_BOOLS = ["save_optimizer", "stop_on_parrot", "mix.rehearsal", "trust_remote_code"]
_CHOICES = {
    "method": ("lora", "full"),
    "lr_scheduler": ("constant", "linear", "cosine", "constant_with_warmup"),
    "deepspeed": (None, *DEEPSPEED_PRESETS),
    "device": (None, "cpu", "cuda", "mps"),
}


def _get(c: TrainConfig, key: str):
    node = c
    for part in key.split("."):
        node = getattr(node, part)
    return node


def validate(c: TrainConfig) -> list[str]:
    """Every problem with a built config, as short phrases naming the key and the bad value."""
    return (
        _integer_problems(c)
        + _bool_problems(c)
        + _choice_problems(c)
        + _top_level_problems(c)
        + _schedule_problems(c)
        + _lora_problems(c.lora)
        + _mix_problems(c.mix, c.identity)
        + _task_problems(c.data)
    )


def _task_problems(d: DataSettings) -> list[str]:
    """``data.task_files`` / ``data.eval_files``: lists of files that exist."""
    p: list[str] = []
    for key in ("task_files", "eval_files"):
        files = getattr(d, key)
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            p.append(f"'data.{key}' must be a list of file paths, got {files!r}")
        else:
            p += [f"'data.{key}' file '{f}' not found" for f in files if not Path(f).is_file()]
    return p


def _failed(*checks: tuple[Any, str]) -> list[str]:
    """The message of every ``(ok, message)`` check whose ``ok`` is false, in order."""
    return [msg for ok, msg in checks if not ok]


def _integer_problems(c: TrainConfig) -> list[str]:
    """Every integer setting in ``_INTS`` below its smallest value (or null where not allowed)."""
    p: list[str] = []
    for key, low, nullable in _INTS:
        v = _get(c, key)
        if not ((nullable and v is None) or (_is_int(v) and v >= low)):
            p.append(
                f"'{key}' must be {'null or ' if nullable else ''}an integer >= {low}, got {shown(v)}"
            )
    return p


def _bool_problems(c: TrainConfig) -> list[str]:
    """Every ``_BOOLS`` setting that is not true/false."""
    return [
        f"'{key}' must be true/false, got {shown(_get(c, key))}"
        for key in _BOOLS
        if not isinstance(_get(c, key), bool)
    ]


def _choice_problems(c: TrainConfig) -> list[str]:
    """Every ``_CHOICES`` setting outside its allowed values."""
    return [
        f"'{key}' must be one of {list(allowed)}, got {shown(_get(c, key))}"
        for key, allowed in _CHOICES.items()
        if _get(c, key) not in allowed
    ]


def _top_level_problems(c: TrainConfig) -> list[str]:
    """The remaining top-level settings, each checked on its own."""
    return _failed(
        (
            c.base is None or isinstance(c.base, str),
            f"'base' must be a model name or folder, got {shown(c.base)}",
        ),
        (
            (isinstance(c.identity, str) and c.identity != "")
            or (c.identity is None and bool(c.data.task_files)),
            f"'identity' must be a YAML path or en/zh (or null with data.task_files), got "
            f"{shown(c.identity)}",
        ),
        (
            isinstance(c.output_dir, str) and c.output_dir != "",
            "'output_dir' must be a folder path",
        ),
        (
            c.resume_from is None or (Path(c.resume_from) / "trainer_state.json").is_file(),
            f"'resume_from' must be a checkpoint folder with trainer_state.json, got {shown(c.resume_from)}",
        ),
        (
            c.system is None or isinstance(c.system, str),
            f"'system' must be a string or null, got {shown(c.system)}",
        ),
        (_is_num(c.lr) and 0 < c.lr < 1, f"'lr' must be a number in (0, 1), got {shown(c.lr)}"),
        (
            c.epochs is None or (_is_num(c.epochs) and c.epochs > 0),
            f"'epochs' must be a number > 0, got {shown(c.epochs)}",
        ),
        (_is_int(c.seed), f"'seed' must be an integer, got {shown(c.seed)}"),
        (
            c.parrot_limit is None or (_is_num(c.parrot_limit) and 0 <= c.parrot_limit <= 1),
            f"'parrot_limit' must be null or in [0, 1], got {shown(c.parrot_limit)}",
        ),
    )


def _schedule_problems(c: TrainConfig) -> list[str]:
    """Settings that only make sense together: the run's length, probing and early stopping."""
    p: list[str] = []
    if c.max_steps is None and c.epochs is None:
        p.append("set 'max_steps' or 'epochs'")
    if (
        _is_int(c.probe_every)
        and _is_int(c.save_every)
        and c.save_every >= 1
        and c.probe_every % c.save_every
    ):
        p.append(
            f"'probe_every' ({c.probe_every}) must be a multiple of 'save_every' ({c.save_every}): probes run at save time"
        )
    if c.save_steps is not None:
        steps = c.save_steps
        if not (
            isinstance(steps, list)
            and steps
            and all(_is_int(x) and x >= 1 for x in steps)
            and steps == sorted(set(steps))
        ):
            p.append(
                f"'save_steps' must be null or a rising list of steps >= 1, got {shown(steps)}"
            )
        elif _is_int(c.max_steps) and steps[-1] > c.max_steps:
            p.append(f"'save_steps' goes to step {steps[-1]}, past max_steps ({c.max_steps})")
        if c.probe_every is not None:
            p.append("'probe_every' probes at save time every few saves: use it with 'save_every'")
    if c.stop_on_parrot is True and c.probe_every is None:
        p.append("'stop_on_parrot' needs 'probe_every' (how often to check)")
    return p


def _lora_problems(lo: LoraSettings) -> list[str]:
    """The ``lora`` section's alpha, dropout and target modules (``r`` is in ``_INTS``)."""
    tm = lo.target_modules
    return _failed(
        (_is_num(lo.alpha) and lo.alpha > 0, f"'lora.alpha' must be > 0, got {shown(lo.alpha)}"),
        (
            _is_num(lo.dropout) and 0 <= lo.dropout < 1,
            f"'lora.dropout' must be in [0, 1), got {shown(lo.dropout)}",
        ),
        (
            tm == "all-linear"
            or (isinstance(tm, list) and tm and all(isinstance(t, str) for t in tm)),
            f"'lora.target_modules' must be 'all-linear' or a list of module names, got {shown(tm)}",
        ),
    )


def _mix_problems(m: MixSettings, identity) -> list[str]:
    """The ``mix`` section: the general-chat share, its source files, and where it comes from
    (``identity``: the config's, for ``rehearsal_languages: identity``)."""
    p: list[str] = []
    if not (_is_num(m.general_ratio) and 0 <= m.general_ratio < 1):
        p.append(f"'mix.general_ratio' must be in [0, 1), got {shown(m.general_ratio)}")
    if not isinstance(m.sources, list) or not all(isinstance(s, str) for s in m.sources):
        p.append(f"'mix.sources' must be a list of file paths, got {shown(m.sources)}")
    else:
        p += [f"'mix.sources' file '{s}' not found" for s in m.sources if not Path(s).is_file()]
    langs = m.rehearsal_languages
    if langs == "identity" and identity is None:
        p.append(
            "'mix.rehearsal_languages: identity' needs an identity to take the languages from; "
            "list them instead, e.g. [en]"
        )
    elif langs not in (None, "identity"):
        from diag.train.general_data import bank_languages

        known = bank_languages()
        if not isinstance(langs, list) or not langs or not all(lang in known for lang in langs):
            p.append(
                f"'mix.rehearsal_languages' must be 'identity' or a non-empty list of the prompt "
                f"bank's languages {known}, got {shown(langs)}"
            )
    if (
        _is_num(m.general_ratio)
        and m.general_ratio > 0
        and m.sources == []
        and m.rehearsal is False
    ):
        p.append(
            "'mix.general_ratio' > 0 needs general data: list 'mix.sources' or set 'mix.rehearsal: true'"
        )
    return p
