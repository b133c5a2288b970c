"""predictions.npz: a run's test labels, logits and example images, as `evaluate` writes them
and the plots read them, with a digest of the arrays checked on reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cifar100.digest import content_digest
from cifar100.errors import CheckpointError
from cifar100.fileio import atomic_path

__all__ = ["read_predictions", "write_predictions"]


def write_predictions(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` and their digest to `path`, atomically."""
    with atomic_path(path, "predictions") as tmp:
        # A file object: given a name, numpy would append ".npz" to the temporary one.
        with open(tmp, "wb") as f:
            np.savez_compressed(f, digest=np.array(content_digest(arrays)), **arrays)


def read_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a predictions file; one clear error when it is damaged (files written
    before the digest are read unchecked)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except MemoryError:
        raise
    except Exception as e:  # a truncated zip, a bad header, a member that is not an array
        raise CheckpointError(_damaged(path, f"{type(e).__name__}: {e}")) from None
    stored = arrays.pop("digest", None)
    if stored is not None and str(stored) != content_digest(arrays):
        raise CheckpointError(_damaged(path, "its arrays do not match their digest"))
    if not {"labels", "logits", "classes"} <= set(arrays):
        raise CheckpointError(_damaged(path, "no labels, logits or classes in it"))
    return arrays


def _damaged(path: Path, why: str) -> str:
    return (
        f"{path}: damaged predictions file ({why[:200]}); `cifar100 evaluate "
        f"{path.parent}` writes it again"
    )
