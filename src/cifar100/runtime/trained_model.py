"""A trained model, from anything this tool writes, ready to classify images of any kind.

    import cifar100
    model = cifar100.load("runs/20261201-120000-cpu-finetune")  # or a .pt, .safetensors, .onnx
    model.classes, model.image_size, model.test_top1
    model.predict(["cat.jpg", pil_image, uint8_array], k=5)[0].top    # [("cat", 0.91), ...]
    model.probabilities(images)              # (N, classes) float32, calibrated (temperature)
    model.predict(images)[0].none_of_these   # True: the image is none of its classes

Images are prepared by the function that prepared the training images (data.images), and run
through the one batched inference loop (inference.py), with PyTorch or ONNX Runtime.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifar100.data.images import prepare_images
from cifar100.errors import CheckpointError, ModelError
from cifar100.fileio import file_problem
from cifar100.models.registry import build_model
from cifar100.runtime.checkpoint import Checkpoint, load_weights, resolve_checkpoint
from cifar100.runtime.device import select_device, tune_backends
from cifar100.runtime.inference import model_batches, run_batches, with_flip
from cifar100.runtime.model_files import READERS
from cifar100.runtime.model_info import ModelInfo
from cifar100.runtime.ood_rule import OodRule
from cifar100.runtime.trust import Scores, score_logits

__all__ = ["Prediction", "TrainedModel", "load"]


@dataclass
class Prediction:
    """The top classes of one image, most probable first; or why it could not be read."""

    top: list[tuple[str, float]] = field(default_factory=list)  # (class, probability)
    name: str | None = None  # the file it came from, where it came from one
    error: str | None = None
    # How unlike the training images it is (runtime/trust.py: higher is less like them), and
    # the verdict: True when it is none of the classes. None for a model saved without the
    # statistics (before they existed): the score is unavailable.
    ood_score: float | None = None
    none_of_these: bool | None = None

    @property
    def label(self) -> str | None:
        return self.top[0][0] if self.top else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON `cifar100 predict --json` prints, one object per image."""
        if self.error is not None:
            return {"path": self.name, "error": self.error}
        score = None if self.ood_score is None else round(self.ood_score, 6)
        return {
            "path": self.name,
            "predictions": [{"class": c, "probability": round(p, 6)} for c, p in self.top],
            "ood_score": score,
            "none_of_these": self.none_of_these,
        }


class TrainedModel:
    """A trained classifier with what it is (`info`), run by PyTorch or ONNX Runtime."""

    def __init__(
        self,
        info: ModelInfo,
        source: Path,
        batches: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        module: torch.nn.Module | None = None,
        runtime: str = "torch",
    ) -> None:
        self.info, self.source, self.device, self.runtime = info, source, device, runtime
        self.module = module  # the torch model (eval mode); None for an ONNX model
        self._batches = batches  # uint8 NHWC batch on `device` -> logits

    classes = property(lambda self: self.info.classes)
    image_size = property(lambda self: self.info.image_size)
    backbone = property(lambda self: self.info.backbone)
    preprocessing = property(lambda self: self.info.preprocessing)
    test_top1 = property(lambda self: self.info.test_top1)

    def __repr__(self) -> str:
        top1 = self.test_top1
        acc = f"test top-1 {top1:.2%}" if top1 is not None else "test accuracy not measured"
        return (
            f"TrainedModel({self.backbone}, {len(self.classes)} classes, {self.image_size}px, "
            f"{self.runtime} on {self.device}, {acc}; from {self.source})"
        )

    def prepare(self, images: Any) -> np.ndarray:
        """uint8 (N, size, size, 3) from paths, bytes, PIL images or uint8 arrays of any size."""
        return prepare_images(images, self.image_size)

    def logits(
        self,
        pixels: np.ndarray | torch.Tensor,
        batch_size: int = 256,
        tta_flip: bool = False,
        progress: bool = False,
    ) -> torch.Tensor:
        """Float32 logits (N, classes) on the CPU of prepared uint8 (N, size, size, 3) images.

        tta_flip: the log of the mean softmax of each image and its mirror image.
        """
        pixels = torch.as_tensor(pixels)
        if pixels.dtype != torch.uint8 or pixels.shape[1:] != (self.image_size,) * 2 + (3,):
            raise ModelError(
                f"expected uint8 images (N, {self.image_size}, {self.image_size}, 3), got "
                f"{pixels.dtype} {tuple(pixels.shape)}; prepare them with model.prepare(...)"
            )
        fn = with_flip(self._batches) if tta_flip else self._batches
        return run_batches(pixels, batch_size, fn, self.device, progress, "predicting")

    @property
    def temperature(self) -> float | None:
        """What calibrates its probabilities (fitted on validation); None: uncalibrated."""
        return self.info.temperature

    @property
    def ood_rule(self) -> OodRule | None:
        """When an image is "none of these"; None for a model saved without it."""
        return self.info.ood_rule

    def scores(self, logits: Any) -> Scores:
        """Calibrated probabilities, OOD scores and verdicts of raw logits (N, classes)."""
        return score_logits(torch.as_tensor(logits), self.temperature, self.ood_rule)

    def explain(
        self, images: Any, class_index: int | list[int] | None = None, method: str = "gradcam"
    ) -> np.ndarray:
        """Where the model looked: maps (N, size, size) float32 in [0, 1] over the prepared
        images (see `prepare`), for `class_index` (one for all, one per image, or None: each
        image's predicted class), by runtime/explain.py's `method` (gradcam | occlusion).
        A model run by PyTorch only (an ONNX export has no gradients to follow)."""
        if self.module is None:
            raise ModelError(
                f"{self.source}: explanations need the PyTorch model; load its checkpoint or "
                "safetensors export instead"
            )
        # Captum on first use: importing it adds about 0.4 s to every load of a model.
        from cifar100.runtime.explain import explain

        return explain(self.module, torch.as_tensor(self.prepare(images)), class_index, method)

    def probabilities(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """Calibrated class probabilities (N, classes), float32, of images of any kind (see
        `prepare`): softmax(logits / temperature). `logits` gives the raw ones."""
        return self.scores(self.logits(self.prepare(images), batch_size)).probabilities.numpy()

    def predict(self, images: Any, k: int = 5, batch_size: int = 256) -> list[Prediction]:
        """The top-k classes of each image, most probable first, with the OOD verdict."""
        return self.top(self.logits(self.prepare(images), batch_size), k)

    def top(self, logits: Any, k: int = 5) -> list[Prediction]:
        """The top-k classes of each row of logits (N, classes), most probable first, and the
        OOD score and verdict: what `predict` gives, for logits computed elsewhere (the
        service's batches)."""
        scores = self.scores(logits)
        top = scores.probabilities.topk(min(k, len(self.classes)), dim=1)
        known = self.ood_rule is not None
        return [
            Prediction(
                [(self.classes[i], float(p)) for p, i in zip(v.tolist(), ix.tolist())],
                ood_score=float(score) if known else None,
                none_of_these=bool(verdict) if known else None,
            )
            for v, ix, score, verdict in zip(
                top.values, top.indices, scores.ood_score.tolist(), scores.none_of_these.tolist()
            )
        ]


def load(
    path: str | Path,
    *,
    device: str = "auto",
    checkpoint: str | None = None,
    ema: bool = False,
) -> TrainedModel:
    """A trained model from a run directory (its `checkpoint`: last or best; by default the
    one its test used, best.pt unless it was trained with train.final=last), a checkpoint
    (.pt), a safetensors export or an ONNX export (run by ONNX Runtime on the CPU).

    ema: the checkpoint's exponential moving average of the weights instead.
    """
    problem = file_problem(path, folder_ok=True)  # before anything opens it: a FIFO would block
    if problem:
        raise CheckpointError(
            f"{path}: {problem}; give a run directory, a checkpoint (.pt) or an export"
        )
    path = resolve_checkpoint(path, checkpoint)
    # An export is read by the reader registered for its suffix; anything else is a checkpoint.
    reader = READERS.get(path.suffix.lower())
    if ema and reader is not None:
        raise CheckpointError(f"{path}: only a checkpoint keeps EMA weights; load it without ema")
    if reader is None:
        info, weights = _read_checkpoint(path, ema)
        return from_weights(info, weights, path, device)
    found = reader(path)
    if found.batches is not None:  # it runs itself (an ONNX export: ONNX Runtime, the CPU)
        cpu = torch.device("cpu")
        return TrainedModel(found.info, path, found.batches, cpu, runtime=found.runtime)
    return from_weights(found.info, found.weights, path, device)


def from_weights(
    info: ModelInfo, weights: dict[str, torch.Tensor], source: Path, device: str = "auto"
) -> TrainedModel:
    """Rebuild `info`'s model, fill it with `weights` and put it on `device` for inference."""
    module = rebuild_model(info)
    load_weights(module, weights, source)
    dev = select_device(device)
    tune_backends(dev)
    module.to(dev).eval()
    if dev.type in ("cuda", "cpu"):  # channels-last: faster on both
        module.to(memory_format=torch.channels_last)
    fn = torch.no_grad()(model_batches(module, dev, info.amp))
    return TrainedModel(info, source, fn, dev, module)


def rebuild_model(info: ModelInfo) -> torch.nn.Module:
    """`info`'s model, randomly initialised, for weights that come with it: its settings say
    what training started from (model.weights "imagenet", model.init), which loading neither
    fetches nor reads."""
    settings = dataclasses.replace(info.model, weights="none", init=None)
    return build_model(settings, num_classes=len(info.classes))


def _read_checkpoint(path: Path, ema: bool) -> tuple[ModelInfo, dict[str, torch.Tensor]]:
    ckpt = Checkpoint.load(path)
    if not ema:
        return ckpt.info, ckpt.model
    ckpt.info.test_top1 = ckpt.info.test_top5 = None  # what was measured: the raw weights
    if not isinstance(ckpt.ema, dict) or "model" not in ckpt.ema:
        raise CheckpointError(
            f"{path}: no EMA weights in this checkpoint (train with --set train.ema_decay=0.999 "
            "to keep them); evaluate without --ema"
        )
    return ckpt.info, ckpt.ema["model"]
