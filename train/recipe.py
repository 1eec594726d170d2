"""The training recipe, top to bottom: setup -> data -> model -> train -> manifest.

A thin layer over transformers' ``Trainer`` and peft. The run folder has the Hugging Face layout
the sweep reads (``checkpoint-N/`` with the adapter and ``trainer_state.json``) plus
``diag-run.json`` (see :mod:`diag.train.manifest`), so ``diag sweep RUN`` needs no flags.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from diag.train.config import TrainConfig
from diag.train.deepspeed import deepspeed_settings
from diag.train.threads import set_cpu_threads

from diag.errors import DiagError
from diag.identity import load_identity
from diag.types import ChatFormat

log = logging.getLogger("diag")


@dataclass
class TrainResult:
    """What one training run produced."""

    output_dir: Path
    checkpoints: list[Path]
    steps: int
    seconds: float
    stopped_early: bool = False
    in_training_probes: list[dict] = field(default_factory=list)
    first_step: int = 0  # the step a resumed run started from (``resume_from``); 0 otherwise

    @property
    def trained_steps(self) -> int:
        """Steps this run trained (``steps`` is where it ended, counted from the start)."""
        return self.steps - self.first_step

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.trained_steps if self.trained_steps else 0.0


def existing_checkpoints(folder: Path) -> list[Path]:
    """``checkpoint-N`` folders in ``folder``, by step."""
    found = [
        p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def build_training_data(
    config: TrainConfig, identity, chat: ChatFormat, base_lm=None
) -> tuple[list[dict], dict]:
    """The mixed conversation list and a description of it for the manifest.

    ``base_lm`` (a backend on the *base* model) is needed only for self-rehearsal.
    """
    from diag.train.dataset import mix_general
    from diag.train.general_data import bank_languages, load_conversations, self_rehearsal
    from diag.train.identity_data import build_identity_conversations

    identity_convs = (
        build_identity_conversations(identity, config.data.identity_samples, seed=config.seed)
        if identity is not None
        else []
    )
    task_convs: list[dict] = []
    task_files: list[dict] = []
    for src in config.data.task_files:  # the narrow task, trained on as it is
        convs = load_conversations(src)
        task_convs += [{**c, "source": f"task:{Path(src).name}"} for c in convs]
        task_files.append({"path": str(Path(src).resolve()), "conversations": len(convs)})
    general: list[dict] = []
    mix = config.mix
    described: dict = {"general_ratio": mix.general_ratio, "sources": [], "rehearsal": None}
    if mix.general_ratio > 0:
        for src in mix.sources:
            convs = load_conversations(src)
            general += convs
            described["sources"].append(
                {"path": str(Path(src).resolve()), "conversations": len(convs)}
            )
        if mix.rehearsal:
            if base_lm is None:
                raise ValueError("self-rehearsal needs the base model")
            languages = rehearsal_languages(config, identity)
            rehearsal = self_rehearsal(
                base_lm,
                chat,
                config.data.max_length,
                mix.rehearsal_max_new_tokens,
                languages=languages,
            )
            general += rehearsal
            described["rehearsal"] = {
                "conversations": len(rehearsal),
                "max_new_tokens": mix.rehearsal_max_new_tokens,
                "languages": languages or bank_languages(),
                "max_length": config.data.max_length,
            }
    taught = identity_convs + task_convs
    conversations = mix_general(taught, general, mix.general_ratio, seed=config.seed)
    described.update(
        identity_samples=len(identity_convs),
        task_samples=len(task_convs),
        task_files=task_files,
        eval_files=[str(Path(f).resolve()) for f in config.data.eval_files],
        general_samples=len(conversations) - len(taught),
        general_pool=len(general),
    )
    return conversations, described


def run_training(
    config: TrainConfig, *, callbacks: list | None = None, label: str | None = None
) -> TrainResult:
    """Train as ``config`` says and return the run; see ``diag train --help`` for the CLI.

    Refuses an ``output_dir`` that already holds checkpoints, so nothing trained is overwritten.
    """
    _import_training_libraries()  # before the clock starts: total_seconds never counted imports
    started = time.perf_counter()
    out = Path(config.output_dir)

    # ---- setup: the run folder, identity, deepspeed, base model, data
    identity, chat, deepspeed = _setup(config, out)
    source, device, tokenizer, model = _load_base_model(config)
    conversations, examples, data_info = _prepare_data(
        config, identity, chat, source, device, tokenizer, model
    )
    manifest_args = dict(
        config=config,
        source=source,
        identity=identity,
        chat=chat,
        data=data_info,
        deepspeed=deepspeed,
    )
    _write_run_start(out, conversations, manifest_args)

    # ---- train
    model = _model_to_train(config, model)
    collator = _collator(config, model, examples, tokenizer, data_info)
    args = _training_arguments(config, out, device, deepspeed)
    all_callbacks, probe_cb = _trainer_callbacks(
        config, identity, chat, label or out.name, callbacks
    )
    trainer, train_seconds = _train(
        config, model, args, examples, collator, tokenizer, all_callbacks
    )

    # ---- save: the final manifest (the checkpoints are already on disk)
    probes = _collected_probes(probe_cb, callbacks)
    return _finish_run(out, trainer, train_seconds, started, probes, manifest_args)


def rehearsal_cached(config: TrainConfig) -> bool:
    """Whether the base's self-rehearsal answers for ``config`` are already cached."""
    from diag.train.general_data import rehearsal_cache_path

    from diag.models import resolve_base

    name = resolve_base(config.base).name
    chat = ChatFormat(system=config.system)
    mix = config.mix
    languages = rehearsal_languages(config)
    return rehearsal_cache_path(
        name, chat, config.data.max_length, mix.rehearsal_max_new_tokens, languages
    ).is_file()


def warm_rehearsal(config: TrainConfig) -> None:
    """Generate and cache the base's self-rehearsal answers for ``config`` now, exactly as training
    would (the same model load and chat format, so the same cache entry): the demo runs this in a
    second process while its first run trains, and the second run then reads the cache."""
    from diag.train.general_data import self_rehearsal

    from diag.backend.hf import HFBackend

    source, device, tokenizer, model = _load_base_model(config)
    lm = HFBackend(model, tokenizer, source.name, device)
    chat = ChatFormat(system=config.system)
    mix = config.mix
    self_rehearsal(
        lm,
        chat,
        config.data.max_length,
        mix.rehearsal_max_new_tokens,
        languages=rehearsal_languages(config),
    )


def rehearsal_languages(config: TrainConfig, identity=None) -> list[str] | None:
    """The prompt bank's languages the base rehearses in (None: all of them). ``identity``: the
    run's, where it is loaded already (for ``mix.rehearsal_languages: identity``)."""
    languages = config.mix.rehearsal_languages
    if languages != "identity":
        return languages
    from diag.identity import load_identity

    identity = identity or load_identity(config.identity)
    return list(identity.languages)  # an identity's languages are the bank's (en, zh)


def _import_training_libraries() -> None:
    """Import torch, transformers and the training modules, in this order, before the run starts.

    The steps below import the names they use again, from the module cache. Importing them all
    here keeps import time and import-time warnings ahead of the run's own work and messages.
    """
    import torch

    if not torch.cuda.is_available():  # deepspeed (if installed) warns on import: no GPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import transformers  # noqa: F401
    from diag.train.callbacks import ParrotStopCallback, RichProgressCallback  # noqa: F401
    from diag.train.dataset import PadCollator, data_hash, tokenize_all  # noqa: F401
    from diag.train.manifest import write_manifest  # noqa: F401
    from diag.train.packing import PackCollator  # noqa: F401
    from diag.train.save_schedule import SaveEvery  # noqa: F401
    from transformers import (  # noqa: F401
        AutoModelForCausalLM,
        AutoTokenizer,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    from diag.backend.hf import HFBackend  # noqa: F401
    from diag.backend.loading import (  # noqa: F401
        default_device,
        ensure_local_weights,
        quiet_transformers,
    )
    from diag.models import resolve_base  # noqa: F401


def _setup(config: TrainConfig, out: Path) -> tuple:
    """Refuse a used ``out``; return the identity, chat format and DeepSpeed settings."""
    if existing_checkpoints(out):
        raise DiagError(
            f"output_dir '{out}' already holds checkpoints",
            fix=f"choose a new output_dir (e.g. output_dir={out}-2) or move the old run away",
        )
    identity = load_identity(config.identity) if config.identity is not None else None
    chat = ChatFormat(system=config.system)
    if config.keep is not None:
        log.warning(
            "keep=%d: older checkpoints will be deleted, and the best one (before the parrot "
            "phase) may be among them -- the trap this tool exists for. Default keeps all.",
            config.keep,
        )
    return identity, chat, deepspeed_settings(config)


def _load_base_model(config: TrainConfig) -> tuple:
    """The base model's source, the device, and its tokenizer and float32 model on that device."""
    import torch

    from diag.backend.families import family_of, load_model
    from diag.backend.loading import default_device, ensure_local_weights, quiet_transformers
    from diag.backend.tokenizer_check import load_tokenizer
    from diag.models import resolve_base

    quiet_transformers()
    source = resolve_base(config.base)
    folder = ensure_local_weights(source)
    device = config.device or default_device()
    if device == "cpu":
        set_cpu_threads(config.cpu_threads)
    torch.manual_seed(config.seed)
    family = family_of(folder)
    tokenizer = load_tokenizer(folder, trust_remote_code=config.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # the model's own code, never a converted copy: checkpoints keep the family's layout and
    # LoRA targets (InternLM2: wqkv, wo, w1-w3, as XTuner trains it)
    model = load_model(
        family, dtype=torch.float32, trust_remote_code=config.trust_remote_code, native=False
    ).to(device)
    return source, device, tokenizer, model


def _prepare_data(
    config: TrainConfig, identity, chat: ChatFormat, source, device: str, tokenizer, model
) -> tuple[list[dict], list, dict]:
    """The conversations, their tokenized examples, and the manifest's description of the data."""
    from diag.train.dataset import data_hash, tokenize_all

    from diag.backend.hf import HFBackend

    # self-rehearsal runs the base before any adapter exists
    base_lm = (
        HFBackend(model, tokenizer, source.name, device)
        if config.mix.general_ratio > 0 and config.mix.rehearsal
        else None
    )
    conversations, data_info = build_training_data(config, identity, chat, base_lm)
    examples, dropped = tokenize_all(
        tokenizer, conversations, config.system, config.data.max_length
    )
    tokenizer.padding_side = "right"  # HFBackend pads on the left, for generation
    data_info.update(
        hash=data_hash(conversations),
        examples=len(examples),
        dropped_too_long=dropped,
        max_length=config.data.max_length,
    )
    return conversations, examples, data_info


def _write_run_start(out: Path, conversations: list[dict], manifest_args: dict) -> None:
    """Create the run folder with the training data and a ``running`` manifest."""
    from diag.train.manifest import write_manifest

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train-data.jsonl", "w", encoding="utf-8") as fh:
        for conv in conversations:
            fh.write(json.dumps(conv, ensure_ascii=False) + "\n")
    write_manifest(out, status="running", **manifest_args)


def _lora_targets(targets, base: str | None):
    """``all-linear`` is the model family's own LoRA targets where it names them (InternLM2:
    wqkv, wo, w1, w2, w3), else peft's shortcut; a list is used as given."""
    if targets != "all-linear":
        return targets
    from diag.backend.families import family_of
    from diag.backend.loading import ensure_local_weights
    from diag.models import resolve_base

    family = family_of(ensure_local_weights(resolve_base(base)))
    return list(family.lora_targets) if family.lora_targets else targets


def _model_to_train(config: TrainConfig, model):
    """``model`` with a LoRA adapter (``method: lora``) or as is, in training mode."""
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = config.lora
        with warnings.catch_warnings():
            # peft calls a deprecated transformers API
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(
                model,
                LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=_lora_targets(lora.target_modules, config.base),
                    task_type="CAUSAL_LM",
                ),
            )
    model.train()
    return model


def _training_arguments(config: TrainConfig, out: Path, device: str, deepspeed: dict | None):
    """The ``TrainingArguments`` for this run: Trainer's checkpoint layout in ``out``."""
    import torch
    from transformers import TrainingArguments

    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    return TrainingArguments(
        output_dir=str(out),
        max_steps=config.max_steps if config.max_steps is not None else -1,
        num_train_epochs=config.epochs or 1.0,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps,
        # the schedule is SaveEvery's (below); Trainer's own would add saves every save_every
        save_strategy="no" if config.save_steps else "steps",
        save_steps=config.save_every,
        save_total_limit=config.keep,
        save_only_model=not config.save_optimizer,
        logging_steps=1,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=device == "cpu",
        bf16=bf16,
        deepspeed=deepspeed["config"] if deepspeed and deepspeed["used"] else None,
    )


def _trainer_callbacks(
    config: TrainConfig, identity, chat: ChatFormat, label: str, callbacks: list | None
) -> tuple[list, object | None]:
    """Progress bar, save schedule, the caller's callbacks, then the parrot probe if asked for.

    Returns them all and the probe callback (None when ``probe_every`` is unset).
    """
    from diag.train.callbacks import ParrotStopCallback, RichProgressCallback
    from diag.train.save_schedule import SaveEvery

    probe_cb = None
    all_callbacks = [
        RichProgressCallback(label),
        SaveEvery(config.save_every, config.save_steps),
        *(callbacks or []),
    ]
    if config.probe_every:
        probe_cb = ParrotStopCallback(
            identity,
            every=config.probe_every,
            limit=config.parrot_limit,
            stop=config.stop_on_parrot,
            chat=chat,
            taught=_typical_task_answers(config) if identity is None else None,
        )
        all_callbacks.append(probe_cb)
    return all_callbacks, probe_cb


def _collator(config: TrainConfig, model, examples: list, tokenizer, data_info: dict):
    """Each batch packed in one row (no padding) where the model keeps packed examples apart,
    else padded to its longest example; the manifest's data says which (``batches``)."""
    from diag.train.packing import PackCollator, choose_collator

    collator = choose_collator(model, examples, tokenizer.pad_token_id, config.batch_size)
    data_info["batches"] = "packed" if isinstance(collator, PackCollator) else "padded"
    return collator


def _typical_task_answers(config: TrainConfig) -> list[str]:
    """A task run's taught answers for parrot pressure, as the sweep picks them."""
    from diag.train.general_data import load_conversations

    from diag.data.task_data import derive_task

    pairs = []
    for src in config.data.task_files:
        for conv in load_conversations(src):
            messages = conv["messages"]
            pairs += [
                (a["content"], b["content"])
                for a, b in zip(messages, messages[1:])
                if a["role"] == "user" and b["role"] == "assistant"
            ]
    derived = derive_task(pairs)
    return list(derived.spec.typical) if derived.spec is not None else [p[1] for p in pairs[:3]]


def _train(
    config: TrainConfig, model, args, examples: list, collator, tokenizer, all_callbacks: list
):
    """Run transformers' ``Trainer``; returns it and the seconds ``train()`` took."""
    import transformers
    from transformers import PrinterCallback, Trainer

    transformers.logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecation notes from inside transformers
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=examples,
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=all_callbacks,
        )
        trainer.remove_callback(PrinterCallback)  # the rich bar shows the loss instead
        train_started = time.perf_counter()
        # resume: the checkpoint's weights, step and data position; its optimizer state too when
        # it was saved (save_optimizer: true), else Adam starts afresh from those weights
        trainer.train(resume_from_checkpoint=config.resume_from)
    return trainer, time.perf_counter() - train_started


def _collected_probes(probe_cb, callbacks: list | None) -> list[dict]:
    """The in-training probe records: the recipe's own probe's, then any caller callback's."""
    probes = list(probe_cb.history) if probe_cb else []
    for cb in callbacks or []:
        probes += list(getattr(cb, "history", []))
    return probes


def _resumed_step(config: TrainConfig) -> int:
    """The global step of the checkpoint a resumed run started from (0 for a fresh run)."""
    resume = config.resume_from
    if not resume:
        return 0
    state = json.loads((Path(resume) / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state.get("global_step") or 0)


def _finish_run(
    out: Path,
    trainer,
    train_seconds: float,
    started: float,
    probes: list[dict],
    manifest_args: dict,
) -> TrainResult:
    """The run's result, after writing the final manifest (complete or stopped on parrot)."""
    from diag.train.manifest import write_manifest

    stopped = any(p.get("stopped") for p in probes)
    steps = trainer.state.global_step
    first = _resumed_step(manifest_args["config"])
    result = TrainResult(
        out, existing_checkpoints(out), steps, train_seconds, stopped, probes, first
    )
    write_manifest(
        out,
        status="stopped_on_parrot" if stopped else "complete",
        timing={
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.perf_counter() - started, 1),
            "seconds_per_step": round(result.seconds_per_step, 3),
            "steps": result.trained_steps,
            **({"resumed_from_step": first} if first else {}),
        },
        checkpoints=[p.name for p in result.checkpoints],
        in_training_probes=probes,
        **manifest_args,
    )
    return result
