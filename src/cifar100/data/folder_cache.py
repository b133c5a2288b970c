"""The on-disk cache of decoded image folders: one .npz per source and options, with a digest
of its arrays so a damaged file is noticed and rebuilt."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import PIL

from cifar100.data.folder_layout import image_set
from cifar100.data.tensors import ImageSet
from cifar100.fileio import atomic_path, mark_used

__all__ = ["cache_key", "read_cache", "write_cache"]

FORMAT_VERSION = 2  # bump when the cache's contents or the decoding change


def cache_key(material: dict, image_size: int, test_fraction: float, seed: int) -> str:
    # Pillow's version is in the key too: another libjpeg may decode slightly differently.
    blob = json.dumps(
        {
            "format": FORMAT_VERSION,
            "pillow": PIL.__version__,
            "image_size": image_size,
            "test_fraction": test_fraction,
            "seed": seed,
            "source": material,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.data)
    return h.hexdigest()


def write_cache(path: Path, train: ImageSet, test: ImageSet, meta: dict) -> None:
    # meta (JSON) carries the files skipped as unreadable, so that a hit can report them again.
    arrays = {
        "train_images": train.images.numpy(),
        "train_labels": train.labels.numpy(),
        "test_images": test.images.numpy(),
        "test_labels": test.labels.numpy(),
        "classes": np.array(train.classes),
        # each image's file, for what an audit flags and `train --exclude` leaves out
        "train_paths": np.array(train.paths or [], dtype=str),
        "test_paths": np.array(test.paths or [], dtype=str),
        "meta": np.array(json.dumps(meta)),
    }
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file: savez adds no suffix
            np.savez(f, digest=np.array(_digest(arrays)), **arrays)
    except OSError as e:  # a full disk or read-only cache costs a re-decode next time, no more
        print(
            f"warning: cannot write image-folder cache {path} ({e}); continuing without it",
            file=sys.stderr,
        )


def _paths(arrays: dict[str, np.ndarray], split: str) -> list[str] | None:
    paths = [str(p) for p in arrays[f"{split}_paths"]]
    return paths if len(paths) == len(arrays[f"{split}_labels"]) else None


def read_cache(path: Path) -> tuple[ImageSet, ImageSet, dict] | None:
    """The cached splits, or None (with one warning line) when the file is unusable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "digest"}
            digest = str(z["digest"])
        if _digest(arrays) != digest:
            raise ValueError("its digest does not match its contents")
        classes = [str(c) for c in arrays["classes"]]
        train, test = (
            image_set(arrays[f"{s}_images"], arrays[f"{s}_labels"], classes, _paths(arrays, s))
            for s in ("train", "test")
        )
        meta = json.loads(str(arrays["meta"]))
        mark_used(path)
        return train, test, meta
    except Exception as e:
        # Every failure (truncated zip, bad header, missing array, digest mismatch) means the
        # same thing: rebuild. It is reported so that a cache that keeps breaking is noticed.
        print(
            f"warning: image-folder cache {path} is unreadable ({type(e).__name__}: {e}); "
            "rebuilding it",
            file=sys.stderr,
        )
        return None
