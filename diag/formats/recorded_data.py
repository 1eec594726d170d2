"""What each trainer records about the data it trained on (no torch, nothing read but records).

Sources, read from the trainers' own code and output folders (``docs/formats.md``):

- diag: ``diag-run.json`` holds the identity spec itself and the general-data files;
- ms-swift: ``args.json`` (2.x: ``sft_args.json``): ``dataset`` (local files or hub names such as
  ``swift/self-cognition#500``), ``model_name`` / ``model_author`` (a zh/en pair each),
  ``system``, ``val_dataset``, ``split_dataset_ratio``;
- XTuner: the saved config: ``data_files`` / ``data_path`` / ``alpaca_en_path``,
  ``dataset_map_fn``, ``SYSTEM``, ``evaluation_inputs``;
- axolotl: the config inside the run's ``README.md``: ``datasets[].path``, ``type``,
  ``field_messages``, ``val_set_size``;
- torchtune: ``torchtune_config.yaml`` ``dataset``: ``source``, ``data_files``,
  ``conversation_style``, ``conversation_column``, ``new_system_prompt``;
- LLaMA-Factory: the model card names the datasets ("... on the identity and the alpaca_en_demo
  datasets."); their files are listed in ``dataset_info.json`` in the ``dataset_dir`` the run was
  launched with (default ``data/``); web-UI runs also write ``training_args.yaml``;
- HF Trainer, TRL, unsloth scripts record nothing: the user names the data (``--data``).

Paths are kept as recorded; :mod:`diag.data.locate` finds them on this machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from diag.formats.trainers import read_json

# The formats of diag.data.conversations, by the names trainers give them.
XTUNER_MAP_FNS = {None: "xtuner", "alpaca_map_fn": "alpaca", "openai_map_fn": "messages",
                  "alpaca_zh_map_fn": "alpaca"}  # fmt: skip
TORCHTUNE_STYLES = {"openai": "messages", "sharegpt": "sharegpt"}


@dataclass(frozen=True)
class DataRef:
    """One dataset a run names, as it names it.

    name: a path (absolute, or relative to the folder the trainer was launched from) or a hub
        dataset id (``swift/self-cognition#500``, ``tatsu-lab/alpaca``).
    origin: the file and key it was read from ("args.json dataset").
    format: the converter its trainer applies (None: detect from the rows).
    columns: LLaMA-Factory's ``dataset_info.json`` entry, or axolotl's field renaming.
    role: "train", or "eval" for a validation set the trainer names.
    folder: for LLaMA-Factory, the ``dataset_dir`` the name is relative to.
    """

    name: str
    origin: str
    format: str | None = None
    columns: dict | None = None
    role: str = "train"
    folder: str | None = None


@dataclass
class DataRecord:
    """Everything a run records about its training data; empty when its trainer records none."""

    refs: list[DataRef] = field(default_factory=list)
    identity: dict | None = None  # a diag run's own spec (diag-run.json)
    names: tuple[str | None, str | None] | None = None  # ms-swift model_name (zh, en)
    authors: tuple[str | None, str | None] | None = None  # ms-swift model_author (zh, en)
    system: str | None = None
    watched: list[str] = field(default_factory=list)  # questions the author chose to watch
    split: dict = field(default_factory=dict)  # validation settings, e.g. {"val_size": 0.1}
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.refs and self.identity is None and self.names is None


def read_data_record(
    run_dir: Path, trainer: str | None, xtuner_config: Path | None = None
) -> DataRecord:
    """What ``run_dir`` (a run written by ``trainer``) says about its training data;
    ``xtuner_config``: the saved XTuner config found in it."""
    record = DataRecord()
    readers = {
        "diag": _diag,
        "ms-swift": _swift,
        "xtuner": _xtuner,
        "axolotl": _axolotl,
        "torchtune": _torchtune,
        "llama-factory": _llamafactory,
    }
    reader = readers.get(trainer or "")
    if reader is _xtuner:
        from diag.formats.xtuner import parse_config

        _xtuner(parse_config(xtuner_config) if xtuner_config else None, record)
    elif reader is not None:
        reader(run_dir, record)
    return record


def _diag(run_dir: Path, record: DataRecord) -> None:
    """diag's manifest: the identity spec itself, and the task files it trained on (the general
    chat it mixed in for dilution is not what it was taught)."""
    manifest = read_json(run_dir / "diag-run.json") or {}
    if isinstance(manifest.get("identity"), dict):
        record.identity = manifest["identity"]
    data = manifest.get("data") if isinstance(manifest.get("data"), dict) else {}
    for key, role in (("task_files", "train"), ("eval_files", "eval")):
        for source in data.get(key) or []:
            path = source.get("path") if isinstance(source, dict) else source
            if isinstance(path, str):
                record.refs.append(DataRef(path, f"diag-run.json data.{key}", role=role))


def _pair(value) -> tuple[str | None, str | None] | None:
    """ms-swift's ``model_name``/``model_author``: [zh, en], one value for both, or None."""
    if isinstance(value, str):
        return value, value
    if isinstance(value, list) and value and all(isinstance(v, str) or v is None for v in value):
        return (value[0], value[1] if len(value) > 1 else value[0])
    return None


def _swift(run_dir: Path, record: DataRecord) -> None:
    name = "args.json" if (run_dir / "args.json").is_file() else "sft_args.json"
    args = read_json(run_dir / name) or {}
    for key, role in (("dataset", "train"), ("val_dataset", "eval")):
        values = args.get(key)
        for value in [values] if isinstance(values, str) else values or []:
            if isinstance(value, str) and value:
                record.refs.append(DataRef(value, f"{name} {key}", role=role))
    record.names, record.authors = _pair(args.get("model_name")), _pair(args.get("model_author"))
    if isinstance(args.get("system"), str):
        record.system = args["system"]
    ratio = args.get("split_dataset_ratio")
    if isinstance(ratio, (int, float)) and ratio > 0:
        record.split["split_dataset_ratio"] = float(ratio)


def _xtuner(config, record: DataRecord) -> None:
    if config is None:
        return
    where = f"{config.path.name} data_files" if config.path else "XTuner config"
    fmt = XTUNER_MAP_FNS.get(config.map_fn)
    if config.map_fn is not None and fmt is None:
        record.notes.append(
            f"XTuner dataset_map_fn '{config.map_fn}' is not one diag reads; "
            "the data file's format is detected from its rows"
        )
    for path in config.data_files:
        record.refs.append(DataRef(path, where, format=fmt))
    record.system = config.system
    record.watched = list(config.evaluation_inputs)


def _readme_config(run_dir: Path) -> dict | None:
    """The training yaml axolotl embeds in its model card."""
    try:
        text = (run_dir / "README.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r"axolotl version: .*?```yaml\n(.*?)```", text, re.S)
    if not match:
        return None
    import yaml

    try:
        config = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    return config if isinstance(config, dict) else None


def _axolotl(run_dir: Path, record: DataRecord) -> None:
    config = _readme_config(run_dir) or {}
    for key, role in (("datasets", "train"), ("test_datasets", "eval")):
        for entry in config.get(key) or []:
            entry = {"path": entry} if isinstance(entry, str) else entry
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                continue
            kind = str(entry.get("type") or "")
            fmt = {"alpaca": "alpaca"}.get(kind.split(":")[0])
            columns = None
            if isinstance(entry.get("field_messages"), str):
                columns = {"columns": {"messages": entry["field_messages"]}}
            record.refs.append(
                DataRef(entry["path"], f"README.md axolotl {key}", fmt, columns, role)
            )
    size = config.get("val_set_size")
    if isinstance(size, (int, float)) and size > 0:
        record.split["val_set_size"] = float(size)


def _torchtune(run_dir: Path, record: DataRecord) -> None:
    import yaml

    try:
        config = yaml.safe_load((run_dir / "torchtune_config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return
    if not isinstance(config, dict):
        return
    # dataset_val: the validation set torchtune's recipes build like `dataset` when
    # run_val_every_n_steps is set (recipes/lora_finetune_single_device.py, _setup_data)
    for key, role in (("dataset", "train"), ("dataset_val", "eval")):
        datasets = config.get(key)
        for entry in datasets if isinstance(datasets, list) else [datasets]:
            if isinstance(entry, dict):
                _torchtune_entry(entry, key, role, record)


def _torchtune_entry(entry: dict, key: str, role: str, record: DataRecord) -> None:
    files = entry.get("data_files")
    names = files if isinstance(files, list) else [files or entry.get("source")]
    fmt = TORCHTUNE_STYLES.get(str(entry.get("conversation_style")))
    column = entry.get("conversation_column")
    columns = {"columns": {"messages": column}} if isinstance(column, str) else None
    if fmt == "messages" and column not in (None, "messages"):
        fmt = None  # an OpenAI list under another column: detected from the rows
    if role == "eval" and not files and entry.get("split"):
        record.split[f"{key}.split"] = entry["split"]  # a slice of the source: not reproduced
        return
    for name in names:
        if isinstance(name, str) and name not in ("json", "parquet", "csv", "text"):
            where = f"torchtune_config.yaml {key}." + ("data_files" if files else "source")
            record.refs.append(DataRef(name, where, fmt, columns, role=role))
    if role == "train" and isinstance(entry.get("new_system_prompt"), str):
        record.system = entry["new_system_prompt"]


_LF_CARD = re.compile(r"fine-tuned version of .*? on the (.+?) datasets?\.", re.S)


def _llamafactory(run_dir: Path, record: DataRecord) -> None:
    args = _yaml_file(run_dir / "training_args.yaml") or {}
    folder = args.get("dataset_dir") if isinstance(args.get("dataset_dir"), str) else "data"
    names = _split_names(args.get("dataset"))
    origin = "training_args.yaml dataset"
    if not names:
        try:
            card = (run_dir / "README.md").read_text(encoding="utf-8", errors="replace")
        except OSError:
            card = ""
        match = _LF_CARD.search(card)
        if match and match.group(1).strip() != "None":
            names = re.split(r",? and the |, the ", match.group(1))
            origin = "README.md (the datasets the model card names)"
    for name in names:
        record.refs.append(DataRef(name.strip(), origin, folder=folder))
    for name in _split_names(args.get("eval_dataset")):
        record.refs.append(
            DataRef(name, "training_args.yaml eval_dataset", role="eval", folder=folder)
        )
    if isinstance(args.get("val_size"), (int, float)) and args["val_size"] > 0:
        record.split["val_size"] = float(args["val_size"])


def _split_names(value) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _yaml_file(path: Path) -> dict | None:
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None
