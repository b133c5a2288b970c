"""Mixup and cutmix on a batch, with soft targets (label smoothing folded in).

Every image is mixed with its partner in the reversed batch, as timm does. All draws come from
the given generator and stay on the device: no host synchronisation per batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cifar100.data.policies import draw_normal, draw_uniform


def smooth_one_hot(y: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """(N,) labels -> (N, num_classes) float targets: 1 - smoothing + smoothing/K on the label."""
    off = smoothing / num_classes
    targets = torch.full((y.shape[0], num_classes), off, device=y.device)
    return targets.scatter_(1, y.long().view(-1, 1), 1.0 - smoothing + off)


def sample_gamma_log(
    alpha: float, n: int, generator: torch.Generator, device: torch.device
) -> Tensor:
    """log of n Gamma(alpha, 1) samples (Marsaglia-Tsang), drawn on the device without syncs."""
    # Gamma(a) = Gamma(a + 1) * U^(1/a) for a < 1; kept in logs so tiny alphas do not underflow.
    a = alpha + 1.0 if alpha < 1.0 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    tries = 8  # each is accepted with probability > 0.95; all 8 failing is ~1e-10
    z = draw_normal((n, tries), generator, device)
    u = draw_uniform((n, tries), generator, device)
    v = (1.0 + c * z) ** 3
    log_v = torch.log(v.clamp(min=1e-30))
    accept = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * log_v)
    first = accept.int().argmax(1, keepdim=True)
    log_g = math.log(d) + log_v.gather(1, first).squeeze(1)
    log_g = torch.where(accept.any(1), log_g, torch.full_like(log_g, math.log(d)))
    if alpha < 1.0:
        boost = draw_uniform((n,), generator, device).clamp(min=1e-30)
        log_g = log_g + torch.log(boost) / alpha
    return log_g


def sample_beta(alpha: float, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """n samples of Beta(alpha, alpha) on `device`, from `generator`."""
    g1 = sample_gamma_log(alpha, n, generator, device)
    g2 = sample_gamma_log(alpha, n, generator, device)
    return torch.sigmoid(g1 - g2)  # G1 / (G1 + G2)


def cutmix_box(lam: Tensor, height: int, width: int, u: Tensor) -> Tensor:
    """(H, W) bool box of area about (1 - lam) of the image, centred at u (two U[0,1)) as timm.

    The box is clipped at the image border, so the caller corrects lambda to its true area.
    """
    cut = torch.sqrt(1.0 - lam)
    half_h = torch.floor(torch.floor(height * cut) / 2)
    half_w = torch.floor(torch.floor(width * cut) / 2)
    cy, cx = torch.floor(u[0] * height), torch.floor(u[1] * width)
    rows = torch.arange(height, device=lam.device).view(height, 1)
    cols = torch.arange(width, device=lam.device).view(1, width)
    in_rows = (rows >= (cy - half_h).clamp(0, height)) & (rows < (cy + half_h).clamp(0, height))
    in_cols = (cols >= (cx - half_w).clamp(0, width)) & (cols < (cx + half_w).clamp(0, width))
    return in_rows & in_cols


def mix_batch(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    mixup_alpha: float,
    cutmix_alpha: float,
    mix_prob: float,
    label_smoothing: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Mixup or cutmix the batch with probability mix_prob; return (x, soft targets (N, K)).

    With both alphas > 0 each mixed batch is cutmix or mixup with probability 1/2 (as timm).
    Unmixed batches get smoothed one-hot targets, so the loss has one path:
    F.cross_entropy(logits, targets).
    """
    targets = smooth_one_hot(y, num_classes, label_smoothing).to(x.device)
    if mix_prob <= 0 or (mixup_alpha <= 0 and cutmix_alpha <= 0):
        return x, targets
    _, _, h, w = x.shape
    u = draw_uniform((4,), generator, x.device)  # mix at all, cutmix or mixup, box centre
    mixed = u[0] < mix_prob
    # weight: per pixel, how much of the image itself is kept (the rest is its partner's).
    if mixup_alpha > 0:
        lam_mixup = sample_beta(mixup_alpha, 1, generator, x.device)[0]
        weight = lam_mixup.expand(h, w)
        lam = lam_mixup
    if cutmix_alpha > 0:
        box = cutmix_box(sample_beta(cutmix_alpha, 1, generator, x.device)[0], h, w, u[2:])
        cut_weight = (~box).to(x.dtype)
        lam_cut = 1.0 - box.sum() / (h * w)  # the true share of the image that is kept
        if mixup_alpha > 0:
            use_cutmix = u[1] < 0.5
            weight = torch.where(use_cutmix, cut_weight, weight)
            lam = torch.where(use_cutmix, lam_cut, lam)
        else:
            weight, lam = cut_weight, lam_cut
    weight = torch.where(mixed, weight, torch.ones_like(weight))
    lam = torch.where(mixed, lam, torch.ones_like(lam))
    # weight is exactly 0 or 1 for cutmix and unmixed batches, so those pixels are exact copies.
    x = x * weight + x.flip(0) * (1 - weight)
    targets = lam * targets + (1 - lam) * targets.flip(0)
    return x, targets
