"""Top-k predictions for image files, each file on its own: one that cannot be read gets its
error, and the others are still predicted. A folder stands for the images in it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cifar100.data.images import IMAGE_EXTENSIONS, decode_image
from cifar100.errors import DataError
from cifar100.trained_model import Prediction, TrainedModel

__all__ = ["image_files", "predict_files"]

NO_IMAGES = "a folder holding no image files (" + " ".join(sorted(IMAGE_EXTENSIONS)) + ")"


def image_files(paths: list[str | Path]) -> list[str]:
    """The paths, with each folder replaced by the image files under it (by suffix, sorted,
    hidden names left out); a folder without any stays, to be reported as such."""
    return [name for name, _ in _expand(paths)]


def predict_files(model: TrainedModel, paths: list[str | Path], k: int = 5) -> list[Prediction]:
    """One Prediction per image, in order, named by its path (a folder: each image in it)."""
    results = []
    good, arrays = [], []
    for name, error in _expand(paths):
        r = Prediction(name=name, error=error)
        results.append(r)
        if error is not None:
            continue
        try:
            arrays.append(decode_image(Path(name), model.image_size, name=name))
            good.append(r)
        except DataError as e:
            # The result carries the name: its error says what went wrong, not where again.
            r.error = str(e).removeprefix(f"{name}: ")
    if arrays:
        for r, p in zip(good, model.predict(np.stack(arrays), k)):
            r.top = p.top
    return results


def _expand(paths: list[str | Path]) -> list[tuple[str, str | None]]:
    """(path, None) for each file to predict, a folder's images in its place; (folder, why)
    for a folder that gives none."""
    out: list[tuple[str, str | None]] = []
    for p in map(Path, paths):
        try:
            is_dir = p.is_dir()
        except OSError:  # a name too long, a symlink loop...: decode_image says which
            is_dir = False
        if not is_dir:
            out.append((str(p), None))
            continue
        try:
            found = sorted(
                str(f)
                for f in p.rglob("*")
                if f.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
                and not f.is_dir()  # a FIFO or a broken link named .png: reported, not lost
            )
        except OSError as e:
            out.append((str(p), f"cannot read folder ({e.strerror or e})"))
            continue
        out.extend((f, None) for f in found)
        if not found:
            out.append((str(p), NO_IMAGES))
    return out
