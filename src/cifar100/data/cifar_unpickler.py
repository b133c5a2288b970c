"""A restricted unpickler for the CIFAR python pickles: it rebuilds dicts, lists and numpy arrays
and refuses every other global."""

from __future__ import annotations

import pickle
from typing import IO, Any

import numpy as np

from cifar100.errors import DataError

__all__ = ["unpickle_arrays"]


def _safe_latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1"), so a
    # re-packed archive needs this; any other codec is refused.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2 (1.26 has the alias too); importing numpy.core would warn there
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x before the alias
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _safe_latin1_encode,
    }
    # The canonical files (Python 2, numpy 1) name numpy.core; numpy 2 pickles name numpy._core.
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    return allowed


_ALLOWED = _allowed_globals()


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists and numpy arrays; refuses every other global before it is called."""

    def __init__(self, file: IO[bytes], label: str) -> None:
        super().__init__(file, encoding="bytes")  # Python 2 str -> bytes, as published
        self.label = label

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.label}: refusing to unpickle {module}.{name} "
                "(CIFAR files hold only arrays and lists)"
            ) from None


def unpickle_arrays(file: IO[bytes], label: str) -> Any:
    try:
        return _ArrayUnpickler(file, label).load()
    except DataError:
        raise
    except Exception as e:  # truncated gzip/tar, bad opcodes, bad numpy state: all one story
        raise DataError(
            f"{label}: truncated or corrupt ({type(e).__name__}: {e}); download or extract it again"
        ) from e
