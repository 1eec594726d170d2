"""Tokenizers are checked, not trusted: a round trip of a fixed multilingual sample at load.

Under transformers 5, ``AutoTokenizer`` can return a fast tokenizer that garbles text with no
error (InternLM2's remote ``InternLM2TokenizerFast`` comes back with no normalizer and no decoder:
"I am Nova" decodes as "I am N o v a"). Answers scored on such text would be wrong quietly. So
every tokenizer diag loads must encode and decode :data:`ROUND_TRIP_SAMPLE` back to itself:

- the fast tokenizer passes: it is used;
- it fails and the model's slow tokenizer (the remote code's own slow class, named first in
  ``tokenizer_config.json``'s ``auto_map``) passes: the slow one is used, and that is logged once;
- neither passes: a one-line :class:`~diag.errors.DiagError` names the folder and the fix.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import unicodedata
from pathlib import Path

from diag.errors import DiagError

log = logging.getLogger("diag")

# English, Chinese, accents, digits: what diag's probes ask and score (identity files are zh too)
ROUND_TRIP_SAMPLE = (
    "Who are you? I am Nova. 你是谁？我是小助手。Café, naïve, Zürich: 0123456789 3.14"
)
REMOTE_CODE_FIX = "re-run with --trust-remote-code if you trust it"

_warned: set[str] = set()


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def ships_code(folder: Path) -> bool:
    """True when the model folder names its own Python code (``auto_map``)."""
    return any(
        _json(Path(folder) / name).get("auto_map")
        for name in ("config.json", "tokenizer_config.json")
    )


def require_trust(folder: Path, trust_remote_code: bool) -> None:
    """diag's one-line error for a model that ships code, before transformers is asked (which
    may prompt, fall back to another reader, or fail with its own unrelated message)."""
    if not trust_remote_code and ships_code(folder):
        raise DiagError(f"model '{folder}' ships its own code", fix=REMOTE_CODE_FIX)


def round_trip_problem(tokenizer) -> str | None:
    """None if ``tokenizer`` gives :data:`ROUND_TRIP_SAMPLE` back (up to Unicode NFKC and outer
    whitespace); else what came back."""
    try:
        ids = tokenizer(ROUND_TRIP_SAMPLE, add_special_tokens=False)["input_ids"]
        back = tokenizer.decode(ids, skip_special_tokens=True)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {str(exc)[:120]}"

    def norm(text: str) -> str:
        return unicodedata.normalize("NFKC", text).strip()

    if norm(back) == norm(ROUND_TRIP_SAMPLE):
        return None
    return f"{ROUND_TRIP_SAMPLE!r} came back as {back!r}"


def _slow_tokenizer(folder: Path, trust_remote_code: bool):
    """The remote code's slow tokenizer class (``auto_map`` ``AutoTokenizer[0]``), or None."""
    names = _json(folder / "tokenizer_config.json").get("auto_map", {}).get("AutoTokenizer")
    if not trust_remote_code or not isinstance(names, list) or not names or not names[0]:
        return None
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    cls = get_class_from_dynamic_module(names[0], str(folder))
    return cls.from_pretrained(str(folder))


def load_tokenizer(folder: str | Path, *, trust_remote_code: bool = False, **kwargs):
    """The model's tokenizer, checked by a round trip (see the module docstring)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    require_trust(folder, trust_remote_code)
    fast = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, **kwargs)
    problem = round_trip_problem(fast)
    if problem is None:
        return fast
    slow = None if kwargs else _slow_tokenizer(folder, trust_remote_code)
    if slow is not None and round_trip_problem(slow) is None:
        if str(folder) not in _warned:
            _warned.add(str(folder))
            log.warning(
                "the tokenizer %s of '%s' does not give text back (%s); using its slow "
                "tokenizer %s, which does",
                type(fast).__name__,
                folder,
                problem,
                type(slow).__name__,
            )
        return slow
    raise DiagError(
        f"the tokenizer of '{folder}' does not give text back: {problem}",
        fix="check its tokenizer files (tokenizer.json / tokenizer.model); install sentencepiece "
        "if it uses one; a model with its own tokenizer code needs --trust-remote-code",
    )


def tokenizer_identity(tokenizer) -> dict:
    """Class and vocabulary hash of a tokenizer: part of the sweep's cache key.

    >>> class T:
    ...     def get_vocab(self):
    ...         return {"a": 0, "b": 1}
    >>> tokenizer_identity(T())
    {'class': 'T', 'vocab': 'sha256:4b4543fe55612726'}
    """
    vocab = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]
    return {"class": type(tokenizer).__name__, "vocab": f"sha256:{digest}"}


def base_tokenizer_key(name: str, trust_remote_code: bool = False) -> dict | None:
    """The identity of the tokenizer diag uses for base ``name`` (:func:`tokenizer_identity`),
    for cache keys; None for the embedded default, whose tokenizer is inside the GGUF that its
    weights fingerprint already covers (its caches stay valid)."""
    from diag.models import DEFAULT_BASE, resolve_base

    source = resolve_base(name)
    if source.name == DEFAULT_BASE:
        return None
    return _folder_tokenizer_key(str(source.path), trust_remote_code)


@functools.lru_cache(maxsize=16)
def _folder_tokenizer_key(folder: str, trust_remote_code: bool) -> dict:
    from diag.backend.loading import quiet_transformers

    quiet_transformers()
    return tokenizer_identity(load_tokenizer(folder, trust_remote_code=trust_remote_code))
