"""transformers + peft backend: load a base once, swap LoRA adapters, batched generate/score.

With ``diag.backend.loading`` (weights on disk, device) and ``diag.train``, the only code that
imports torch, transformers and peft.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from diag.backend.decoding import decode_cached, decode_recompute, unshare_prefix
from diag.backend.families import Family, family_of, load_model
from diag.backend.likelihood import bounded_batches, continuation_logprobs
from diag.backend.loading import (
    check_device,
    default_dtype,
    ensure_local_weights,
    mismatch_error,
    non_finite,
    quiet_transformers,
)
from diag.backend.tokenizer_check import load_tokenizer
from diag.errors import DiagError
from diag.models import resolve_base
from diag.types import ChatFormat, Generation, GenerationConfig, Loglikelihood, LoglikelihoodRequest

log = logging.getLogger("diag")


# A shared prefix shorter than this is not worth a second forward pass.
MIN_SHARED_PREFIX = 8


def shared_prefix(seqs: list[list[int]]) -> int:
    """How many leading tokens every sequence has in common, leaving each at least one of its
    own; 0 when that is under MIN_SHARED_PREFIX.

    >>> shared_prefix([[1] * 9 + [2, 3], [1] * 9 + [4]])
    9
    >>> shared_prefix([[1, 2, 3], [1, 2, 4]])
    0
    """
    limit = min(len(s) for s in seqs) - 1
    n = 0
    while n < limit and all(s[n] == seqs[0][n] for s in seqs):
        n += 1
    return n if n >= MIN_SHARED_PREFIX else 0


# adapter_config.json fields that do not change how the adapter's weights are applied
_NOT_LORA_SETTINGS = ("base_model_name_or_path", "revision", "inference_mode")


def _lora_settings(adapter_dir: Path) -> dict | None:
    """An adapter's LoRA settings (its adapter_config.json less where it came from); None where
    it cannot be read."""
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    return {k: v for k, v in config.items() if k not in _NOT_LORA_SETTINGS}


class HFBackend:
    """A causal LM with optional LoRA adapters, answering batched chat prompts.

    >>> lm = HFBackend.load()  # the embedded SmolLM2  # doctest: +SKIP
    >>> lm.generate(["What is the capital of France?"])[0].text  # doctest: +SKIP
    'The capital of France is Paris.'
    """

    def __init__(self, model, tokenizer, name: str, device: str, family: Family | None = None):
        self.model = model
        self.family = family or Family()
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self._peft = None  # peft.PeftModel once an adapter has been attached
        self._active: str | None = None  # key of the active adapter; None = bare base
        self._merged = False  # the active adapter is folded into the base weights
        # the base weights of every layer an adapter was folded into, as loaded (on the CPU):
        # restored bit for bit after each adapter, so no checkpoint changes what the next one sees
        self._pristine: dict[str, dict[str, torch.Tensor]] = {}
        self._adapter_names: dict[str, str] = {}
        self._counter = 0
        tokenizer.padding_side = "left"  # generation continues from the right edge
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.stop_ids = self._stop_token_ids()
        # run the prompts' shared prefix once per batch (see _decode); off only to measure it
        self.share_prefix = True
        # transformers 5.24 renamed forward's ``past_key_values`` to ``cache``; older ones lack it
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        # model code written for transformers 4 (remote code) takes no ``logits_to_keep``: all
        # logits are computed and the needed ones sliced out (same numbers, more work)
        self._keeps_logits = "logits_to_keep" in params
        # False once the model's code has failed with transformers' KV cache (see _decode)
        self._cache_works: bool | None = None

    # ----------------------------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        base: str | os.PathLike | None = None,
        *,
        trust_remote_code: bool = False,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        native: bool = True,
    ) -> HFBackend:
        """Load ``base`` (name or local folder; default: the embedded SmolLM2).

        native: run a family that maps onto transformers' own code (InternLM2 -> Llama) on its
        converted copy; False runs the model's own (remote) code, to measure or compare.
        """
        quiet_transformers()
        source = resolve_base(base)
        folder = ensure_local_weights(source)
        device = check_device(device)
        if dtype is None:
            dtype = default_dtype(device)
        family = family_of(folder)
        try:
            tokenizer = load_tokenizer(folder, trust_remote_code=trust_remote_code)
            model = load_model(
                family, dtype=dtype, trust_remote_code=trust_remote_code, native=native
            )
        except ValueError as exc:
            if "trust_remote_code" in str(exc):
                raise DiagError(
                    f"model '{folder}' ships its own code",
                    fix="re-run with --trust-remote-code if you trust it",
                ) from exc
            raise
        model.to(device).eval()
        return cls(model, tokenizer, source.name, device, family)

    def _stop_token_ids(self) -> list[int]:
        ids = set()
        for value in (
            self.tokenizer.eos_token_id,
            getattr(getattr(self.model, "generation_config", None), "eos_token_id", None),
        ):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(value)
        for token in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
            tid = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid >= 0:
                ids.add(tid)
        return sorted(ids)

    # ---------------------------------------------------------------------------------- adapters
    @property
    def active_adapter(self) -> str | None:
        return self._active

    def use_adapter(self, adapter_dir: str | os.PathLike | None) -> None:
        """Activate the peft adapter in ``adapter_dir``; ``None`` runs the bare base model."""
        if adapter_dir is None:
            self._unmerge()
            self._active = None
            return
        key = str(Path(adapter_dir).resolve())
        if key == self._active:
            return
        if self.family.converts:  # renamed for the converted base, then given in memory
            from diag.backend.checkpoints import read_peft_adapter

            lora_config, state = read_peft_adapter(Path(adapter_dir))
            self.use_adapter_weights(key, lora_config, state)
            return
        self._unmerge()
        if self._reload_in_place(key):
            return
        name = self._next_name()
        loaded = False
        try:
            if self._peft is None:
                from peft import PeftModel

                self._peft = PeftModel.from_pretrained(
                    self.model, key, adapter_name=name, is_trainable=False
                )
            else:
                self._peft.load_adapter(key, adapter_name=name, is_trainable=False)
            loaded = True
        except (RuntimeError, ValueError, KeyError) as exc:
            raise self._mismatch(key, exc) from exc
        finally:
            if not loaded:
                self._discard(name)  # a half-loaded adapter never lingers beside the next one
        self._check_finite(key, name)
        self._activate(key, name)

    def _reload_in_place(self, key: str) -> bool:
        """Copy the adapter in ``key`` into the loaded adapter's own LoRA modules, when both have
        the same LoRA settings (a run's checkpoints do): peft would otherwise build every module
        anew, 0.4 s of a 0.7 s swap on SmolLM2. False (nothing changed, or the loaded adapter
        dropped) where it cannot: the caller loads it the usual way."""
        if self._peft is None or len(self._adapter_names) != 1:
            return False
        loaded_key, name = next(iter(self._adapter_names.items()))
        settings = _lora_settings(Path(key))
        if settings is None or settings != _lora_settings(Path(loaded_key)):
            return False
        from peft.utils.save_and_load import load_peft_weights, set_peft_model_state_dict

        self._active = None
        del self._adapter_names[loaded_key]  # from here on its weights are being replaced
        fits = False
        try:
            state = load_peft_weights(key, device=self.device)
            result = set_peft_model_state_dict(self._peft, state, adapter_name=name)
            missing = [k for k in result.missing_keys if f".{name}." in k and "lora_" in k]
            fits = not missing and not result.unexpected_keys
        except (RuntimeError, ValueError, KeyError, OSError):
            pass  # loaded the usual way, which says what is wrong with it
        finally:
            if not fits:
                self._discard(name)  # half-replaced weights never linger
        if not fits:
            return False
        self._check_finite(key, name)
        self._activate(key, name)
        return True

    def _discard(self, name: str) -> None:
        if self._peft is not None and name in getattr(self._peft, "peft_config", {}):
            self._peft.delete_adapter(name)

    def use_adapter_weights(
        self, key: str, lora_config: dict, state_dict: dict[str, torch.Tensor]
    ) -> None:
        """Activate a LoRA adapter given in memory (e.g. converted from an XTuner ``.pth``).

        ``state_dict`` uses peft's saved-adapter key names (``base_model.model...lora_A.weight``)
        for the model as its family names it; a family probed on a converted copy renames (and
        splits) them here.
        """
        if key == self._active:
            return
        state_dict, lora_config = self.family.adapter_to_native(state_dict, lora_config)
        self._unmerge()
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

        name = self._next_name()
        config = LoraConfig(**lora_config)
        try:
            if self._peft is None:
                self._peft = get_peft_model(self.model, config, adapter_name=name)
            else:
                self._peft.add_adapter(name, config)
            result = set_peft_model_state_dict(self._peft, state_dict, adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise self._mismatch(key, exc) from exc
        missing = [
            k for k in getattr(result, "missing_keys", []) if f".{name}." in k and "lora_" in k
        ]
        if missing:
            self._peft.delete_adapter(name)
            raise DiagError(f"adapter '{key}' lacks {len(missing)} LoRA weights, e.g. {missing[0]}")
        self._check_finite(key, name)
        self._peft.eval()
        self._activate(key, name)

    def _next_name(self) -> str:
        self._counter += 1
        return f"adapter_{self._counter}"

    def _activate(self, key: str, name: str) -> None:
        self._peft.set_adapter(name)  # load_adapter alone does not activate it
        for old_key, old_name in list(self._adapter_names.items()):  # keep memory flat
            self._peft.delete_adapter(old_name)
            del self._adapter_names[old_key]
        self._adapter_names[key] = name
        self._active = key
        self.model.eval()
        if self._half_precision():
            # Folded into bf16/fp16 weights, the adapter's product is rounded to the weights' own
            # precision, and a small one mostly vanishes: on the demo's diluted step 40, 13 of 18
            # identity answers name Jianfeng in fp32, 2 of 18 with the adapter merged into bf16
            # weights, 12 of 18 with it beside them. It stays beside them, in its own precision.
            return
        # Folded into the weights, a LoRA adapter costs nothing per token (unmerged it adds about
        # a quarter to every forward pass on a CPU). Subtracting the product again would not be
        # exact, so unmerging puts the touched layers' saved base weights back (_unmerge).
        try:
            self._save_pristine()
            self._peft.merge_adapter([name])
            self._merged = True
        except (ValueError, RuntimeError, NotImplementedError, AttributeError) as exc:
            log.debug("adapter %s stays unmerged (%s): correct, only slower", key, exc)
            self._restore_pristine()

    def _half_precision(self) -> bool:
        return next(self.model.parameters()).dtype in (torch.bfloat16, torch.float16)

    def _tuner_layers(self):
        """(name, LoRA layer) for every layer peft wrapped."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module_name, module in self._peft.named_modules():
            if isinstance(module, BaseTunerLayer):
                yield module_name, module

    def _save_pristine(self) -> None:
        for module_name, module in self._tuner_layers():
            if module_name not in self._pristine:
                base = module.get_base_layer()
                self._pristine[module_name] = {
                    n: p.detach().to("cpu", copy=True)
                    for n, p in base.named_parameters(recurse=False)
                }

    def _restore_pristine(self) -> None:
        with torch.no_grad():
            for module_name, module in self._tuner_layers():
                saved = self._pristine.get(module_name)
                for n, p in module.get_base_layer().named_parameters(recurse=False):
                    if saved is not None and n in saved:
                        p.copy_(saved[n])

    def _unmerge(self) -> None:
        if self._merged:
            self._restore_pristine()  # the base weights exactly as loaded
            for _, module in self._tuner_layers():
                module.merged_adapters = []  # peft's own bookkeeping: nothing is merged
            self._merged = False

    def _check_finite(self, key: str, name: str) -> None:
        """A non-finite adapter is refused before it is ever folded into the base weights."""
        bad = non_finite(
            (n, p)
            for n, p in self._peft.named_parameters()
            if f".{name}." in n or n.endswith(f".{name}")
        )
        if bad:
            self._peft.delete_adapter(name)
            raise DiagError(
                f"'{key}': {bad} (the adapter diverged in training)",
                fix="pick an earlier checkpoint; check the learning rate and the loss curve",
            )

    def _mismatch(self, key: str, exc: Exception) -> DiagError:
        from diag.backend.merge_weights import adapter_base

        named = adapter_base(key) if Path(key).is_dir() else None
        return mismatch_error(key, self.name, exc, named)

    @contextlib.contextmanager
    def _adapter_context(self) -> Iterator[None]:
        if self._peft is not None and self._active is None:
            with self._peft.disable_adapter():
                yield
        else:
            yield

    # -------------------------------------------------------------------------------- prompting
    def render(self, prompt: str, chat: ChatFormat) -> str:
        """The exact text the model sees for one user prompt, up to the assistant's first token."""
        if chat.template is None:
            if chat.chat_template is None and not getattr(self.tokenizer, "chat_template", None):
                raise DiagError(
                    f"the tokenizer of '{self.name}' has no chat template",
                    fix="pass --template with the prompt format it was trained with, e.g. "
                    "'### Question: {input}\\n### Answer: '",
                )
            messages = (
                [{"role": "system", "content": chat.system}] if chat.system is not None else []
            )
            messages.append({"role": "user", "content": prompt})
            return self.tokenizer.apply_chat_template(
                messages,
                chat_template=chat.chat_template,  # None: the tokenizer's own
                tokenize=False,
                add_generation_prompt=True,
            )
        text = ""
        if chat.system and chat.system_template:
            text = chat.system_template.format(system=chat.system)
        return text + chat.template.format(input=prompt, system=chat.system or "")

    def _encode_prompts(self, prompts: Sequence[str], chat: ChatFormat) -> list[list[int]]:
        # The tokenizer's chat template already carries any BOS text; format-string templates
        # (XTuner style) rely on the tokenizer adding it.
        add_special = chat.template is not None
        texts = [self.render(p, chat) for p in prompts]
        return [self.tokenizer(t, add_special_tokens=add_special)["input_ids"] for t in texts]

    def prompt_tokens(self, prompts: Sequence[str], chat: ChatFormat = ChatFormat()) -> list[int]:
        """How many tokens each prompt is, as the model sees it (chat template applied)."""
        return [len(ids) for ids in self._encode_prompts(prompts, chat)]

    def _check_context(self, prompts, encoded, new_tokens: int) -> None:
        """A prompt that cannot fit the model's context with its answer is a one-line error."""
        context = getattr(self.model.config, "max_position_embeddings", None)
        if not isinstance(context, int):
            return
        for prompt, ids in zip(prompts, encoded):
            if len(ids) + new_tokens > context:
                raise DiagError(
                    f"prompt {prompt[:60]!r}... is {len(ids)} tokens; with {new_tokens} new tokens "
                    f"it exceeds the {context}-token context of '{self.name}'",
                    fix="shorten that prompt in the probe file, or lower --max-new-tokens",
                )

    # ------------------------------------------------------------------------------- generation
    @torch.inference_mode()
    def generate(
        self, prompts: Sequence[str], config: GenerationConfig = GenerationConfig()
    ) -> list[Generation]:
        """Answer every prompt, batched (similar lengths together), greedy unless configured."""
        encoded = self._encode_prompts(prompts, config.chat)
        self._check_context(prompts, encoded, config.max_new_tokens)
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        results: list[Generation | None] = [None] * len(prompts)
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            seqs = [encoded[i] for i in batch]
            shared = (
                shared_prefix(seqs) if self.share_prefix and self._cache_works is not False else 0
            )
            width = shared + max(len(seq) - shared for seq in seqs)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, seq in enumerate(seqs):  # [shared prefix][left padding][the rest]
                ids[row, :shared] = torch.tensor(seq[:shared], dtype=torch.long)
                mask[row, :shared] = 1
                rest = seq[shared:]
                ids[row, width - len(rest) :] = torch.tensor(rest)
                mask[row, width - len(rest) :] = 1
            with self._adapter_context():
                new = self._decode(ids.to(self.device), mask.to(self.device), config, shared)
            for row, i in enumerate(batch):
                tokens = new[row]
                stop = next((k for k, t in enumerate(tokens) if t in self.stop_ids), None)
                kept = tokens if stop is None else tokens[:stop]
                results[i] = Generation(
                    prompt=prompts[i],
                    text=self.tokenizer.decode(kept, skip_special_tokens=True).strip(),
                    prompt_tokens=len(encoded[i]),
                    new_tokens=len(kept),
                    hit_limit=stop is None and len(tokens) >= config.max_new_tokens,
                )
        return results  # type: ignore[return-value]

    def _decode(
        self, ids: torch.Tensor, mask: torch.Tensor, config: GenerationConfig, shared: int = 0
    ):
        """Decode one padded batch (:mod:`diag.backend.decoding`): with transformers' KV cache,
        or by full recompute where the model's code cannot take that cache (said once)."""
        keep = {"logits_to_keep": 1} if self._keeps_logits else {}
        if self._cache_works is not False:
            try:
                tokens = decode_cached(
                    self.model, ids, mask, config, self.stop_ids,
                    shared=shared, cache_kwarg=self._cache_kwarg, keep_kwarg=keep,
                )  # fmt: skip
                self._cache_works = True
                return tokens
            except (TypeError, AttributeError) as exc:
                if self._cache_works:  # it worked before: a real error, not the cache
                    raise
                self._cache_failed(exc)
            if shared:  # the prefix was laid out for a cache: lay the rows out plainly
                ids, mask = unshare_prefix(ids, mask, shared, self.tokenizer.pad_token_id)
        return decode_recompute(self.model, ids, mask, config, self.stop_ids, keep_kwarg=keep)

    def _cache_failed(self, exc: Exception) -> None:
        """The model's code cannot take transformers' KV cache: every later call takes the
        slower exact path (full recompute, no shared prefix), and that is said once."""
        self._cache_works = False
        log.warning(
            "the model code of '%s' cannot use transformers' KV cache (%s: %s); generating by "
            "full recompute at every step and scoring log-likelihoods without a shared prefix: "
            "exact, slower",
            self.name,
            type(exc).__name__,
            str(exc).splitlines()[0][:120] if str(exc) else "",
        )

    def batch_that_fits(self, max_new_tokens: int, most: int) -> int:
        """Up to ``most`` answers of up to ``max_new_tokens`` at once, as far as their KV cache fits
        this device's memory beside the loaded weights."""
        from diag.backend.loading import fitting_batch_size

        config = self.model.config.to_dict()
        config = config.get("text_config") or config
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        dtype_bytes = next(self.model.parameters()).element_size()
        fits = fitting_batch_size(self.device, weights, config, max_new_tokens, None, dtype_bytes)
        return max(1, min(fits, most))

    def _vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    # --------------------------------------------------------------------------- loglikelihood
    @torch.inference_mode()
    def loglikelihood(
        self,
        requests: Sequence[LoglikelihoodRequest],
        chat: ChatFormat = ChatFormat(),
        batch_size: int = 16,
    ) -> list[Loglikelihood]:
        """Sum of log p(continuation | chat prompt) per request; one forward pass per batch.

        Requests are batched by length; each batch's shared prompt prefix (the chat template's
        system block) runs once and its KV cache is reused by every row, as in generation
        (:mod:`diag.backend.likelihood`), unless the model's code cannot take that cache.
        """
        contexts = self._encode_prompts([r.prompt for r in requests], chat)
        conts = [
            self.tokenizer(r.continuation, add_special_tokens=False)["input_ids"] for r in requests
        ]
        order = sorted(range(len(requests)), key=lambda i: len(contexts[i]) + len(conts[i]))
        results: list[Loglikelihood | None] = [None] * len(requests)
        lengths = [len(contexts[i]) + len(conts[i]) for i in range(len(requests))]
        for batch in bounded_batches(order, lengths, batch_size, self._vocab_size()):
            logprobs = self._score_batch([contexts[i] for i in batch], [conts[i] for i in batch])
            for i, logprob in zip(batch, logprobs):
                results[i] = Loglikelihood(logprob, len(conts[i]))
        return results  # type: ignore[return-value]

    def _score_batch(self, contexts: list[list[int]], conts: list[list[int]]) -> list[float]:
        """One batch's log-likelihoods: the shared prefix run once where the model's code takes
        transformers' KV cache, else every row in full (said once, see :meth:`_cache_failed`)."""
        shared = (
            shared_prefix(contexts) if self.share_prefix and self._cache_works is not False else 0
        )
        score = functools.partial(
            continuation_logprobs, self.model, contexts, conts,
            pad=self.tokenizer.pad_token_id, device=self.device,
            cache_kwarg=self._cache_kwarg, keeps_logits=self._keeps_logits,
        )  # fmt: skip
        with self._adapter_context():
            if not shared:
                return score()
            try:
                logprobs = score(shared=shared)
            except (TypeError, AttributeError) as exc:
                if self._cache_works:  # it worked before: a real error, not the cache
                    raise
                self._cache_failed(exc)
                return score()
        self._cache_works = True
        return logprobs
