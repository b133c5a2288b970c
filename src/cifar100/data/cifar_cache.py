"""The decoded-CIFAR cache: the validated arrays of one archive kept as an .npz, checked again on
reading and rebuilt when damaged."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np

from cifar100.data.cifar_sources import NUM_COARSE, CifarSource
from cifar100.errors import DataError
from cifar100.fileio import atomic_path, mark_used

__all__ = ["DECODED_VERSION", "load_decoded", "save_decoded"]

# Bump when the layout of the decoded .npz changes, so old caches are ignored, not misread.
DECODED_VERSION = 1


def save_decoded(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)  # a file object: np.savez would append .npz to a name
    except OSError as e:
        print(f"warning: could not cache decoded data at {path} ({e})", file=sys.stderr)


def load_decoded(source: CifarSource, path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when absent or damaged (then rebuilt from the archive).

    Integrity: zipfile checks each member's stored CRC-32 as numpy reads it to the end, and the
    arrays are re-validated (shapes, dtypes, label ranges), which is cheap next to decoding.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        _check_decoded(source, arrays)
        mark_used(path)
        return arrays
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, DataError) as e:
        print(f"warning: decoded cache {path} is damaged ({e}); rebuilding it", file=sys.stderr)
        return None


def _check_decoded(source: CifarSource, arrays: dict[str, np.ndarray]) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise DataError(what)

    need(len(arrays["classes"]) == source.num_classes, "wrong number of classes")
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        need(images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3), f"{split} images")
        need(labels.dtype == np.int64 and labels.shape == (len(images),), f"{split} labels")
        need(0 <= labels.min() and labels.max() < source.num_classes, f"{split} label range")
        if source.has_coarse:
            coarse = arrays[f"{split}_coarse"]
            need(coarse.dtype == np.int64 and coarse.shape == labels.shape, f"{split} coarse")
            need(0 <= coarse.min() and coarse.max() < NUM_COARSE, f"{split} coarse range")
    if source.has_coarse:
        need(len(arrays["coarse_classes"]) == NUM_COARSE, "wrong number of coarse classes")
