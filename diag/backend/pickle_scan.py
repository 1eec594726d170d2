"""Refuse a pickled weight file that would allocate far more memory than the file holds, before
anything in it is unpickled (pure standard library: the opcodes are read, never run).

torch's weights-only allow-list admits ``bytearray`` and the legacy ``*Storage``/``*Tensor``
constructors, and a call of any of them with a number allocates that many bytes (or elements):
a 1 KB file holding ``bytearray(4_000_000_000)`` makes ``torch.load(weights_only=True)`` take
4 GB. Real checkpoints keep their data in the file's own storage records, so no honest call asks
for more than the file's size. :func:`check_allocations` follows the pickle machine's stack
(``pickletools``' own opcode table says what each opcode takes and leaves) far enough to see
which callable each ``REDUCE`` calls with which numbers.
"""

from __future__ import annotations

import _compat_pickle
import pickletools
import zipfile
from math import prod
from pathlib import Path

from diag.errors import DiagError

_UNKNOWN = object()  # a stack value the scan does not follow
_MAX_PICKLES = 5  # torch's legacy format: magic number, protocol, sys info, the object, keys


class _Global(tuple):
    """A ``module.name`` pushed by GLOBAL / STACK_GLOBAL, with Python 2 names mapped as the
    unpickler maps them (protocol 2 writes ``__builtin__ bytearray``)."""

    def __new__(cls, module: str, name: str):
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        return super().__new__(cls, (_compat_pickle.IMPORT_MAPPING.get(module, module), name))

    @property
    def qualname(self) -> str:
        return f"{self[0]}.{self[1]}"


def _allocates(func) -> bool:
    """Callables of torch's allow-list that allocate as many bytes/elements as they are asked
    (``_rebuild_qtensor`` allocates its size before it attaches the file's storage)."""
    if not isinstance(func, _Global):
        return False
    module, name = func
    return (module, name) in (("builtins", "bytearray"), ("torch._utils", "_rebuild_qtensor")) or (
        module.startswith("torch") and name.endswith(("Storage", "Tensor"))
    )


def _claimed(func: _Global, args) -> int:
    """The size a call asks for: the product of the numbers it is given (0 if none)."""
    if not isinstance(args, tuple):
        return 0
    if func == ("torch._utils", "_rebuild_qtensor") and len(args) > 2:
        args = args[2]  # its size tuple
    numbers = [a for a in args if isinstance(a, int) and not isinstance(a, bool)]
    for a in args:
        if isinstance(a, tuple):
            numbers += [n for n in a if isinstance(n, int) and not isinstance(n, bool)]
    return prod(numbers) if numbers and all(n >= 0 for n in numbers) else 0


def _check_call(func, args, limit: int, where: str) -> None:
    if not _allocates(func):
        return
    claimed = _claimed(func, args)
    if claimed > limit:
        raise DiagError(
            f"'{where}' asks for {claimed:,} bytes ({func.qualname}) while it is unpickled but "
            f"holds only {limit:,}: refused before loading (a corrupt or hostile file)",
            fix="delete it, or copy it again from the training run",
        )


def _scan(stream, limit: int, where: str) -> None:
    """Follow one pickle's stack up to STOP; raise at an allocation larger than ``limit``."""
    stack: list = []
    marks: list[int] = []
    memo: dict = {}
    for op, arg, _pos in pickletools.genops(stream):
        name = op.name
        if name == "STOP":
            return
        if name == "MARK":
            marks.append(len(stack))
        elif name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            stack.append(_Global(module, attr))
        elif name == "STACK_GLOBAL" and len(stack) >= 2:
            attr, module = stack.pop(), stack.pop()
            ok = isinstance(module, str) and isinstance(attr, str)
            stack.append(_Global(module, attr) if ok else _UNKNOWN)
        elif name in ("PUT", "BINPUT", "LONG_BINPUT") and stack:
            memo[arg] = stack[-1]
        elif name == "MEMOIZE" and stack:
            memo[len(memo)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg, _UNKNOWN))
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3") and len(stack) >= int(name[-1]):
            n = int(name[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "TUPLE" and marks:
            start = marks.pop()
            items = tuple(stack[start:])
            del stack[start:]
            stack.append(items)
        elif name in ("REDUCE", "NEWOBJ") and len(stack) >= 2:
            args, func = stack.pop(), stack.pop()
            _check_call(func, args, limit, where)
            stack.append(_UNKNOWN)
        elif isinstance(arg, (int, str)) and not op.stack_before and len(op.stack_after) == 1:
            stack.append(arg)  # a number or a string pushed by its opcode
        else:
            _generic(op, stack, marks)


def _generic(op, stack: list, marks: list[int]) -> None:
    """Any other opcode: pop what it takes (to the mark, if it takes one), push unknowns."""
    before = list(op.stack_before)
    if pickletools.markobject in before:
        start = marks.pop() if marks else len(stack)
        del stack[start:]
        before = before[: before.index(pickletools.markobject)]
    taken = [x for x in before if x is not pickletools.stackslice]
    if taken:
        del stack[-len(taken) :]
    stack.extend(_UNKNOWN for _ in op.stack_after)


def check_allocations(path: str | Path) -> None:
    """Raise a one-line DiagError if unpickling ``path`` would allocate more than its size.

    A torch zip archive: every ``.pkl`` record is scanned. A legacy (non-zip) file: the pickles at
    its start. Reading stops quietly where the bytes stop being a pickle (raw storage data).
    """
    path = Path(path)
    limit = path.stat().st_size
    where = str(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".pkl"):
                    with archive.open(info) as stream:
                        _scan_quietly(stream, limit, where)
        return
    with open(path, "rb") as stream:
        for _ in range(_MAX_PICKLES):
            if not _scan_quietly(stream, limit, where):
                return


def _scan_quietly(stream, limit: int, where: str) -> bool:
    """:func:`_scan`, with bytes that are not a pickle left to the loader to judge (False)."""
    try:
        _scan(stream, limit, where)
    except (ValueError, EOFError, IndexError, KeyError, UnicodeDecodeError):
        return False
    return True
