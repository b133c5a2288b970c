"""Where the model looked: class-activation maps of a torch classifier, by Captum (the PyTorch
project's interpretability library).

    maps = explain(model, pixels, class_index=None, method="gradcam")   # (N, H, W) in [0, 1]
    overlay(pixels[0], maps[0])                                         # uint8 (H, W, 3)

Two methods, both through Captum, on every registered backbone alike:
- gradcam (Selvaraju et al. 2017): the gradient of the class's logit, averaged per channel,
  weighting the backbone's last feature map (the backbone's own output, before pooling, which
  every backbone here has); one forward and one backward pass per batch.
- occlusion (Zeiler & Fergus 2014): gradient-free; how much the class's probability falls
  when a square of the image is greyed out, slid over the image. Slower (one forward pass
  per position), but it explains the input pixels themselves and needs no layer.

Captum rather than `grad-cam` (jacobgil/pytorch-grad-cam): grad-cam requires torchvision,
which does not import beside the torch this project pins, and OpenCV; Captum needs only
torch, numpy and matplotlib, which are already here.
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam, Occlusion
from torch import nn

from cifar100.errors import ModelError

__all__ = ["METHODS", "explain", "feature_map_size", "overlay", "side_by_side", "stretched"]

METHODS = ("gradcam", "occlusion")
HOT = np.array([230, 20, 20], np.float32)  # the red of a map's peak


def explain(
    model: nn.Module,
    pixels: torch.Tensor,
    class_index: int | list[int] | None = None,
    method: str = "gradcam",
    batch_size: int = 64,
) -> np.ndarray:
    """Maps (N, H, W) float32 in [0, 1] of uint8 images (N, H, W, 3) for `class_index` (one
    class for all, one per image, or None: each image's predicted class); each map scaled so
    that its largest value is 1 (0 everywhere where nothing supports the class, or where the
    map is the same everywhere, as a 1x1 feature map gives it: it says nothing about where).

    `model`: raw pixels (N, 3, H, W) in 0..255 -> logits, with a `backbone` whose output is
    the last feature map (models.head.Classifier). Runs on the model's device, in eval mode
    (the caller's mode is restored)."""
    if method not in METHODS:
        raise ModelError(f"explanation method {method!r}: choose {' or '.join(METHODS)}")
    pixels = torch.as_tensor(pixels)
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ModelError(f"expected uint8 images (N, H, W, 3), got {tuple(pixels.shape)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = [
            _explain_batch(model, pixels[lo : lo + batch_size], class_index, lo, method, device)
            for lo in range(0, len(pixels), batch_size)
        ]
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, *pixels.shape[1:3]), np.float32)
    return np.concatenate(out)


def feature_map_size(model: nn.Module, image_size: int) -> tuple[int, int]:
    """(height, width) of the last feature map Grad-CAM weighs, for images of `image_size`
    pixels: how coarse its maps are. (1, 1): no map at all, every pixel the same (a 32-pixel
    image with no upsampling: the backbone's 32-fold reduction leaves one cell)."""
    device = next(model.parameters()).device
    seen: list[tuple[int, int]] = []
    hook = model.backbone.register_forward_hook(lambda m, i, out: seen.append(out.shape[-2:]))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        hook.remove()
        model.train(was_training)
    return int(seen[0][0]), int(seen[0][1])


def _explain_batch(model, batch, class_index, start, method, device) -> np.ndarray:
    x = batch.to(device).permute(0, 3, 1, 2).float().contiguous()
    with torch.no_grad():
        predicted = model(x).argmax(1)
    target = _targets(class_index, predicted, start, len(batch), model)
    if method == "gradcam":
        cam = LayerGradCam(model, model.backbone).attribute(
            x, target=target, relu_attributions=True
        )
        maps = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")
    else:
        side = max(2, x.shape[-1] // 8)  # a square an eighth of the image, half-overlapping

        def probability(inputs: torch.Tensor) -> torch.Tensor:
            return model(inputs).float().softmax(1)

        maps = (
            Occlusion(probability)
            .attribute(
                x,
                sliding_window_shapes=(3, side, side),
                strides=(3, max(1, side // 2), max(1, side // 2)),
                baselines=127.5,  # mid-grey: what "nothing here" looks like in raw pixels
                target=target,
                perturbations_per_eval=16,
            )
            .sum(1, keepdim=True)
        )
    maps = maps.detach().float().clamp(min=0)[:, 0]
    peak = maps.flatten(1).amax(1)[:, None, None]
    # A map the same everywhere (a 1x1 feature map, or nothing that stands out) says nothing
    # about where: all 0, not all 1, which an overlay would draw as "everywhere".
    flat = (peak - maps.flatten(1).amin(1)[:, None, None]) <= 1e-6 * peak.clamp(min=1e-12)
    maps = torch.where(flat, torch.zeros_like(maps), maps / peak.clamp(min=1e-12))
    return maps.cpu().numpy().astype(np.float32)


def _targets(class_index, predicted, start, n, model) -> torch.Tensor:
    classes = model.num_classes if hasattr(model, "num_classes") else None
    if class_index is None:
        return predicted
    if isinstance(class_index, int):
        chosen = [class_index] * n
    else:
        chosen = list(class_index)[start : start + n]
    for c in chosen:
        if not isinstance(c, int) or isinstance(c, bool) or (classes and not 0 <= c < classes):
            raise ModelError(f"class index {c!r}: a class number 0..{(classes or 1) - 1}")
    return torch.tensor(chosen, device=predicted.device)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The image (H, W, 3) uint8 tinted red where `heatmap` (H, W) in [0, 1] is high, by up
    to `alpha` (cold regions leave the image as it was).

    One hue, not a rainbow colour map ('jet'): the maps of a 32-pixel image are coarse (2x2
    for EfficientNet at 64 px inside), and scaled up smoothly they drew rainbow bands that
    read as structure; "the redder, the more the prediction rests there" reads at a glance."""
    weight = alpha * np.clip(heatmap, 0, 1)[..., None]
    return (image.astype(np.float32) * (1 - weight) + HOT * weight).round().astype(np.uint8)


def stretched(heatmap: np.ndarray) -> np.ndarray:
    """The map (H, W) stretched from its least to its largest value onto [0, 1], as it is
    drawn (as Grad-CAM's authors draw it): a coarse map is often high everywhere, and tinted
    as it is the whole image goes red; stretched, the tint shows where the model looked
    most, relative to the rest. All 0 for a map the same everywhere."""
    heat = np.clip(heatmap, 0, 1).astype(np.float32)
    spread = float(heat.max() - heat.min())
    return (heat - heat.min()) / spread if spread > 1e-6 else np.zeros_like(heat)


def side_by_side(image: np.ndarray, heatmap: np.ndarray, min_side: int = 128) -> np.ndarray:
    """uint8 (S, 2S + gap, 3): the image | the image with `heatmap` over it, scaled up to at
    least `min_side` pixels a side so that a 32-pixel image can be seen: the image by whole
    pixels (nearest: its real pixels, not a blur), the map smoothly (bilinear).

    The map is drawn `stretched`."""
    from PIL import Image  # Pillow on first use: explain() alone never needs it

    h, w = image.shape[:2]
    factor = max(1, -(-min_side // min(h, w)))  # a whole factor: every pixel the same size
    size = (w * factor, h * factor)
    big = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.NEAREST))
    heat = stretched(heatmap)
    big_heat = np.asarray(Image.fromarray(heat, mode="F").resize(size, Image.Resampling.BILINEAR))
    gap = np.full((size[1], max(4, factor), 3), 255, np.uint8)
    return np.concatenate([big, gap, overlay(big, big_heat)], axis=1)
