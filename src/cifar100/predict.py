"""Top-k predictions for image files, prepared exactly as the training images were."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cifar100.data.images import decode_image
from cifar100.engine.checkpoint import load_checkpoint, resolve_checkpoint, restore_model
from cifar100.engine.runtime import select_device
from cifar100.errors import DataError
from cifar100.evaluate import predict_logits


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)  # (class, probability)
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {
            "path": self.path,
            "predictions": [{"class": c, "probability": round(p, 6)} for c, p in self.top],
        }


class Predictor:
    """A trained checkpoint, ready to classify images of any size or mode."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", which: str = "last") -> None:
        path = resolve_checkpoint(checkpoint, which)
        state = load_checkpoint(path)
        self.model, self.config = restore_model(state, path)
        self.classes: list[str] = list(state["classes"])
        self.image_size = int(state.get("image_size", 32))
        self.device = select_device(device)
        self.model.to(self.device)

    def predict_arrays(self, images: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (class, probability) for uint8 (N, size, size, 3) arrays."""
        logits = predict_logits(
            self.model, torch.from_numpy(images), self.device, amp=self.config.train.amp
        )
        probs = logits.softmax(1)
        top = probs.topk(min(k, len(self.classes)), dim=1)
        return [
            [(self.classes[i], float(p)) for p, i in zip(vals.tolist(), idx.tolist())]
            for vals, idx in zip(top.values, top.indices)
        ]

    def predict_files(self, paths: list[str | Path], k: int = 5) -> list[Prediction]:
        """One Prediction per path; an unreadable file gets an error and the rest still run."""
        results = [Prediction(str(p)) for p in paths]
        good, arrays = [], []
        for r in results:
            try:
                arrays.append(decode_image(Path(r.path), self.image_size, name=r.path))
                good.append(r)
            except (DataError, OSError) as e:
                r.error = str(e)
        if arrays:
            for r, top in zip(good, self.predict_arrays(np.stack(arrays), k)):
                r.top = top
        return results
