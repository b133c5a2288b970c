"""Digests of contents (tensors, arrays, nested values): what checkpoints and caches store to
notice a damaged file when they are read back. Needs no torch unless it is given tensors."""

from __future__ import annotations

import hashlib
import sys
from typing import Any

import numpy as np

__all__ = ["content_digest", "hash_tensor", "tensor_bytes", "tensor_digest"]


def hash_tensor(h: Any, t: Any) -> None:
    """Feed a tensor's dtype, shape and bytes into the hash object `h`."""
    # dtype and shape first, so equal bytes of a different layout never collide.
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)};".encode())
    h.update(t.reshape(-1).view(sys.modules["torch"].uint8).numpy())


def _update(h: Any, obj: Any) -> None:
    """Feed a canonical, typed encoding of `obj` into `h` (dict keys in sorted order)."""
    torch = sys.modules.get("torch")  # not imported: then nothing here is a tensor
    if torch is not None and isinstance(obj, torch.Tensor):
        h.update(b"T")
        hash_tensor(h, obj)
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"A{a.dtype.str}{a.shape};".encode())
        h.update(a.reshape(-1).view(np.uint8).data)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _update(h, key)
            _update(h, obj[key])
    elif isinstance(obj, list | tuple):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)};".encode())
        for item in obj:
            _update(h, item)
    elif obj is None or isinstance(obj, bool | int | float | str | bytes) or _is_dtype(obj):
        text = repr(obj).encode()
        h.update(f"{type(obj).__name__}{len(text)};".encode() + text)
    else:
        raise TypeError(f"cannot digest a {type(obj).__name__}")


def _is_dtype(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.dtype)


def content_digest(obj: Any) -> str:
    """sha256 of a nested structure of tensors, arrays, containers and plain values."""
    h = hashlib.sha256()
    _update(h, obj)
    return h.hexdigest()


def tensor_digest(t: Any) -> str:
    """sha256 of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256()
    hash_tensor(h, t)
    return h.hexdigest()


def tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor in a nested structure: about what saving it writes."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0
