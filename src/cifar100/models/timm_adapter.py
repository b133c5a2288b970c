"""Any timm model as a backbone: `--backbone timm:resnetv2_50x1_bit.goog_in21k` (a family of
backbones in the registry: each name's spec is made from the timm model's own pretrained_cfg).

timm is optional (pip install timm; it imports torchvision, so that must match your torch).
The model is built with num_classes=0, global_pool="" and returns its last feature map,
(N, num_features, h, w), which the Classifier pools. `--weights imagenet` means timm's own
pretrained weights (fetched by timm from the Hugging Face hub); a file path is loaded by timm.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from cifar100.errors import ModelError
from cifar100.fileio import file_problem
from cifar100.models.head import IMAGENET_MEAN, IMAGENET_STD
from cifar100.models.registry import BackboneSpec, register_backbone_family

TIMM_PREFIX = "timm:"

# pretrained_cfg (mean, std) on x / 255 -> the Preprocess mode that computes exactly that.
EXACT_MODES = {
    (IMAGENET_MEAN, IMAGENET_STD): "torch",
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)): "tf",  # (x/255 - 0.5) / 0.5 == x/127.5 - 1
    ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)): "none",
}


def _timm() -> Any:
    try:
        import timm
    except ImportError as e:  # absent, or present without a torchvision that imports
        raise ModelError(f"timm backbones need timm: pip install timm ({e})") from None
    return timm


def _create(model_name: str, **kwargs: Any) -> nn.Module:
    timm = _timm()
    try:
        return timm.create_model(model_name, num_classes=0, global_pool="", **kwargs)
    except RuntimeError as e:  # timm's "Unknown model" and friends
        raise ModelError(f"timm:{model_name}: {e}") from None


@dataclass(frozen=True)
class TimmModelInfo:
    """What the registry needs from a timm model's definition and its pretrained_cfg."""

    out_features: int
    native_size: int
    preprocessing: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


def preprocess_mode(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[str, bool]:
    """(mode, exact): the Preprocess mode for this mean/std, "torch" when none is exact."""
    for (m, s), mode in EXACT_MODES.items():
        if all(abs(a - b) < 1e-3 for a, b in zip((*mean, *std), (*m, *s), strict=True)):
            return mode, True
    return "torch", False


def describe_timm_model(model_name: str) -> TimmModelInfo:
    """num_features, input size and normalisation, from a weightless build on the meta device."""
    try:
        with torch.device("meta"):  # no memory, no init cost: only attributes are read
            model = _create(model_name, pretrained=False)
    except ModelError:
        raise
    except Exception:  # a model whose __init__ computes on tensors: build it for real
        model = _create(model_name, pretrained=False)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    mode, exact = preprocess_mode(mean, std)
    if not exact:
        warnings.warn(
            f"timm:{model_name} expects mean {mean} / std {std}, which no preprocessing mode "
            "computes; using ImageNet's (torch). Fine-tuning absorbs the difference.",
            stacklevel=2,
        )
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    return TimmModelInfo(int(model.num_features), size, mode, mean, std)


class TimmBackbone(nn.Module):
    """A timm model without pooling or classifier: (N, 3, H, W) -> (N, num_features, h, w)."""

    def __init__(self, model_name: str) -> None:
        super().__init__()
        self.model_name = model_name
        self.model = _create(model_name, pretrained=False)
        self.out_features = int(self.model.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model.forward_features(x)
        if y.ndim == 3:  # a transformer's tokens (N, L, C): drop class/register tokens
            y = y[:, getattr(self.model, "num_prefix_tokens", 0) :]
            return y.transpose(1, 2).unsqueeze(-1)  # (N, C, L, 1): pooling averages the tokens
        if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
            y = y.permute(0, 3, 1, 2)
        return y

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}"


def load_timm_weights(
    backbone: TimmBackbone,
    source: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
) -> None:
    """timm's pretrained weights ("imagenet") or a local file in timm's format, in place.
    (timm keeps its own cache; `cache_dir` is the registry's loader signature.)"""
    kwargs: dict[str, Any] = {"pretrained": True}
    if str(source).lower() != "imagenet":
        path = os.path.expanduser(os.fspath(source))
        problem = file_problem(path)  # before anything opens it: a FIFO would block
        if problem:
            raise ModelError(f"{path}: {problem}; give a weights file (or --weights imagenet)")
        if not os.path.isfile(path):
            raise ModelError(f"{path}: no such weights file (or use --weights imagenet / none)")
        kwargs["pretrained_cfg_overlay"] = {"file": path}
    try:
        # timm's own loading: it filters and adapts checkpoints per model (classifier removed).
        pretrained = _create(backbone.model_name, **kwargs)
    except ModelError:
        raise
    except Exception as e:  # no network to the hub, a corrupt file, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"timm:{backbone.model_name}: could not load pretrained weights ({reason}); "
            "offline? pass --weights /path/to/weights or --weights none"
        ) from None
    backbone.model.load_state_dict(pretrained.state_dict(), strict=True)


def timm_spec(name: str) -> BackboneSpec:
    """The spec of `timm:<model name>`, from a weightless build of that model."""
    model_name = name.removeprefix(TIMM_PREFIX)
    if not model_name:
        raise ModelError("timm: needs a model name, e.g. timm:resnetv2_50x1_bit.goog_in21k")
    info = describe_timm_model(model_name)
    return BackboneSpec(
        name=name,
        constructor=partial(TimmBackbone, model_name),
        out_features=info.out_features,
        native_size=info.native_size,
        preprocessing=info.preprocessing,
        weight_sources={
            "imagenet": "timm's pretrained weights (downloaded by timm from the Hugging Face hub)",
            "none": "random init",
        },
        load_weights=load_timm_weights,
    )


register_backbone_family(TIMM_PREFIX, timm_spec, hint="timm:<model name>")
