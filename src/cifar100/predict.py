"""Top-k predictions for image files, each file on its own: one that cannot be read gets its
error, and the others are still predicted. A folder stands for the images in it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cifar100.data.images import IMAGE_EXTENSIONS, decode_image
from cifar100.errors import DataError
from cifar100.trained_model import Prediction, TrainedModel

__all__ = ["image_files", "predict_files"]


def image_files(paths: list[str | Path]) -> list[str]:
    """The paths, with each folder replaced by the image files under it (by suffix, sorted,
    hidden names left out); a folder without any stays, to be reported as such."""
    out: list[str] = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(str(p))
            continue
        found = sorted(
            str(f)
            for f in p.rglob("*")
            if f.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in f.relative_to(p).parts)
            and f.is_file()
        )
        out.extend(found or [str(p)])
    return out


def predict_files(model: TrainedModel, paths: list[str | Path], k: int = 5) -> list[Prediction]:
    """One Prediction per image, in order, named by its path (a folder: each image in it)."""
    results = [Prediction(name=p) for p in image_files(paths)]
    good, arrays = [], []
    for r in results:
        if Path(r.name).is_dir():
            r.error = "a folder holding no image files (" + " ".join(sorted(IMAGE_EXTENSIONS))
            r.error += ")"
            continue
        try:
            arrays.append(decode_image(Path(r.name), model.image_size, name=r.name))
            good.append(r)
        except (DataError, OSError) as e:
            # The result carries the name: its error says what went wrong, not where again.
            r.error = str(e).removeprefix(f"{r.name}: ")
    if arrays:
        for r, p in zip(good, model.predict(np.stack(arrays), k)):
            r.top = p.top
    return results
