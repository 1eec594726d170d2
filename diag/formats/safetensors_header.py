"""A safetensors file's header, read and checked before its bytes are hashed or loaded (pure
Python, no torch: 8 bytes of length, then JSON).

A checkpoint's weights are fingerprinted (hashed in full) before they are loaded, so a file whose
header claims a 4 GB tensor -- a sparse file of zeros behind a 150-byte header -- would cost a
minute of hashing before the loader refused it. :func:`check_header` refuses it first: the data
the header describes must fill the file exactly, and no tensor may be wider than the base model
it is meant for.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from diag.errors import DiagError

MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the header's size


def read_header(path: Path) -> tuple[dict, int]:
    """(tensor name -> {"dtype", "shape", "data_offsets"}, header bytes incl. the length field)."""
    if not path.is_file():  # never opened: a FIFO would block, /dev/zero never ends
        raise _bad(path, "is not a regular file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise _bad(path, f"is {size} bytes, too short for a safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if length > min(MAX_HEADER, size - 8):
            raise _bad(path, f"claims a {length:,}-byte header in a {size:,}-byte file")
        text = fh.read(length)
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _bad(path, f"has a header that is not JSON ({str(exc)[:80]})") from None
    if not isinstance(header, dict):
        raise _bad(path, "has a header that is not a JSON object")
    header.pop("__metadata__", None)
    return header, 8 + length


def check_header(path: Path, widest: int | None = None) -> None:
    """Raise a one-line DiagError if ``path``'s header does not describe the file: data offsets
    past its end or short of it, or a tensor dimension above ``widest`` (the base model's widest
    dimension: no adapter or fine-tune of it has a wider tensor)."""
    header, start = read_header(path)
    size = path.stat().st_size
    end = 0
    for name, info in header.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not _ints(shape) or not _ints(offsets) or len(offsets) != 2:
            raise _bad(path, f"describes tensor {name[:100]!r} without a shape and data offsets")
        end = max(end, offsets[1])
        if widest is not None and shape and max(shape) > widest:
            claimed = f"{offsets[1] - offsets[0]:,} bytes" if offsets[1] > offsets[0] else "its"
            raise _bad(
                path,
                f"claims tensor {name[:100]!r} of shape {shape} ({claimed}), wider than any "
                f"dimension of its base model ({widest:,})",
                fix="this file is not weights of this base: copy it again or pass the right --base",
            )
    if start + end != size:
        raise _bad(
            path,
            f"holds {size - start:,} bytes of data but its header describes {end:,}",
            fix="it was cut short or padded: copy it again from the training run",
        )


def widest_dimension(config_file: Path) -> int | None:
    """The largest whole number in a model's ``config.json`` (its own and its text model's):
    above every width, vocabulary and context length of the model. None if unreadable."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(config, dict):
        return None
    parts = [config, config.get("text_config")]
    numbers = [
        v
        for part in parts
        if isinstance(part, dict)
        for v in part.values()
        if isinstance(v, int) and not isinstance(v, bool)
    ]
    return max(numbers, default=None)


def _ints(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value
    )


def _bad(path: Path, problem: str, fix: str = "copy it again from the training run") -> DiagError:
    return DiagError(f"'{path}' {problem}", fix=fix)
