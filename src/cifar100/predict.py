"""Top-k predictions for image files, each file on its own: one that cannot be read gets its
error, and the others are still predicted."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cifar100.data.images import decode_image
from cifar100.errors import DataError
from cifar100.trained_model import Prediction, TrainedModel

__all__ = ["predict_files"]


def predict_files(model: TrainedModel, paths: list[str | Path], k: int = 5) -> list[Prediction]:
    """One Prediction per path, in order, named by its path."""
    results = [Prediction(name=str(p)) for p in paths]
    good, arrays = [], []
    for r in results:
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
