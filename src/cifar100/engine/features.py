"""Frozen-feature mode's first half: pooled backbone features, computed once and cached.

    feats = cached_features(model, train_set, "train", FeatureCache(cache_dir), cfg.model, device)

engine/head_training.py trains the head on them.
Cache files: <root>/features/<key>.pt, one float32 (N, C) tensor each, digest-checked on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm  # a widget in Jupyter, text on a terminal

from cifar100.config import ModelConfig
from cifar100.data.tensors import ImageSet
from cifar100.digest import hash_tensor, tensor_digest
from cifar100.fileio import mark_used, torch_save_atomic
from cifar100.models.head import Classifier
from cifar100.runtime.device import autocast
from cifar100.runtime.inference import model_batches, run_batches

FORMAT = "cifar100-features"
# Part of every key: bump it when extraction changes, so old cache entries are never reused.
VERSION = 1


def extract_features(
    model: Classifier,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    amp: bool = True,
    flip: bool = False,
    progress: bool = False,
    desc: str | None = None,
) -> torch.Tensor:
    """Float32 (N, C) features on the CPU of uint8 (N, H, W, 3) images, exactly as at inference.

    flip=True gives the features of the left-right mirrored images.
    """
    was_training = model.training
    model.eval()  # batch norm on its moving statistics, no dropout: what inference sees
    features = model_batches(model, device, amp, "features")
    fn = (lambda batch: features(batch.flip(2))) if flip else features  # NHWC: 2 is the width
    desc = desc or "features" + (" (flipped)" if flip else "")
    try:
        out = run_batches(images, batch_size, fn, device, progress, desc)
    finally:
        model.train(was_training)
    return out if len(images) else torch.empty(0, model.backbone.out_features)


def state_digest(module: nn.Module) -> str:
    """A short hash of a module's state_dict (names, dtypes, shapes, values).

    Weights from different files thus never share a cache entry, whatever their label.
    """
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode() + b"\0")
        hash_tensor(h, t)
    return h.hexdigest()[:16]


class FeatureCache:
    """Feature tensors on disk, one file per key, each checked against its stored digest."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.dir = Path(root) / "features"

    @staticmethod
    def key(
        backbone: str,
        weights: str,
        resize: int,
        preprocess: str,
        image_size: int,
        data_fingerprint: str,
        backbone_state_digest: str,
        flip: bool,
        split: str,
        *,
        compute: str = "float32",
    ) -> str:
        """A short sha256 of everything the features depend on; `compute` names the precision."""
        fields = {
            "format": FORMAT,
            "version": VERSION,
            "backbone": backbone,
            "weights": weights,
            "resize": int(resize),
            "preprocess": preprocess,
            "image_size": int(image_size),
            "data": data_fingerprint,
            "state": backbone_state_digest,
            "flip": bool(flip),
            "split": split,
            "compute": compute,
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.pt"

    def load(self, key: str) -> torch.Tensor | None:
        """The tensor stored under `key`; None when absent, or damaged (then deleted, warned)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry = _checked(torch.load(path, map_location="cpu", weights_only=True), key)
            mark_used(path)
            return entry
        # Any failure at all means "rebuild it": a cache must never break (or feed) a run.
        except Exception as e:
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            print(
                f"warning: feature cache {path} is damaged ({detail}); recomputing it",
                file=sys.stderr,
            )
            path.unlink(missing_ok=True)
            return None

    def discard(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def save(self, key: str, features: torch.Tensor) -> None:
        """Store `features` under `key` atomically; a failed write warns and is skipped."""
        features = features.detach().cpu().contiguous()
        entry = {
            "format": FORMAT,
            "version": VERSION,
            "key": key,
            "shape": list(features.shape),
            "digest": tensor_digest(features),
            "features": features,
        }
        try:
            torch_save_atomic(entry, self.path(key))
        except OSError as e:
            print(f"warning: could not write feature cache {self.path(key)} ({e})", file=sys.stderr)


def _checked(entry: object, key: str) -> torch.Tensor:
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        raise ValueError("not a cifar100 feature file")
    if entry.get("version") != VERSION or entry.get("key") != key:
        raise ValueError("written for another version or key")
    features = entry["features"]
    if not isinstance(features, torch.Tensor) or list(features.shape) != entry["shape"]:
        raise ValueError("shape differs from the stored one")
    if tensor_digest(features) != entry["digest"]:
        raise ValueError("digest mismatch")
    return features


# Images per saved part of an extraction (rounded down to whole batches): a stopped
# extraction loses at most one part's work.
PART_IMAGES = 8192


def extract_in_parts(
    images: torch.Tensor,
    key: str,
    cache: FeatureCache | None,
    model: Classifier,
    device: torch.device,
    batch_size: int,
    amp: bool,
    flip: bool,
    progress: bool,
) -> torch.Tensor:
    """Features of `images`, cached under `key`, computed in parts that are cached as they
    finish: a stopped extraction (Ctrl-C, a crash) resumes from its last finished part.

    The parts are whole batches, so the result equals one uninterrupted extraction's.
    """
    per = max(batch_size, PART_IMAGES // batch_size * batch_size)
    count = -(-len(images) // per)
    parts = []
    for i in range(count):
        lo, hi = i * per, min(len(images), (i + 1) * per)
        part_key = f"{key}-part{i + 1}of{count}"
        feats = cache.load(part_key) if cache is not None and count > 1 else None
        if feats is None or len(feats) != hi - lo:
            desc = "features" + (" (flipped)" if flip else "")
            desc += f", part {i + 1}/{count}" if count > 1 else ""
            feats = extract_features(
                model, images[lo:hi], device, batch_size, amp, flip, progress, desc
            )
            if cache is not None and count > 1:
                cache.save(part_key, feats)
        parts.append(feats)
    if not parts:  # no images: the (0, C) result of the extraction itself
        parts = [extract_features(model, images, device, batch_size, amp, flip)]
    out = torch.cat(parts) if len(parts) > 1 else parts[0]
    if cache is not None:
        cache.save(key, out)  # the whole entry first, then its parts can go
        for i in range(count if count > 1 else 0):
            cache.discard(f"{key}-part{i + 1}of{count}")
    return out


def _compute_tag(device: torch.device, amp: bool) -> str:
    # bf16 and fp32 features differ, as do CPU and GPU kernels: a run's result must depend on
    # its own settings, not on which run happened to fill the cache first.
    bf16 = isinstance(autocast(device, amp), torch.autocast)
    return f"{device.type}/{'bfloat16' if bf16 else 'float32'}"


def cached_features(
    model: Classifier,
    data: ImageSet,
    split: str,
    cache: FeatureCache | None,
    model_cfg: ModelConfig,
    device: torch.device,
    batch_size: int = 256,
    amp: bool = True,
    flip: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Features of `data`, from the cache or computed (and cached); float32 on the CPU.

    Layout: (N, C) in `data`'s order; with flip, (2N, C): row N + i is image i mirrored.
    Each half is its own cache entry, so toggling flip reuses the unmirrored one.
    """
    start = time.perf_counter()
    common = {
        "backbone": model_cfg.backbone,
        "weights": model_cfg.weights,
        # Read off the model, not the config: preprocess=None there means the backbone's own.
        "resize": getattr(model.upsample, "factor", 1),
        "preprocess": model.preprocess.mode,
        "image_size": data.image_size,
        "data_fingerprint": data.fingerprint(labels=False),
        "backbone_state_digest": state_digest(model.backbone),
        "split": split,
    }
    compute = _compute_tag(device, amp)
    parts, computed = [], False
    for mirrored in (False, True) if flip else (False,):
        key = FeatureCache.key(**common, flip=mirrored, compute=compute)
        feats = cache.load(key) if cache is not None else None
        if feats is None or len(feats) != len(data):
            feats = extract_in_parts(
                data.images, key, cache, model, device, batch_size, amp, mirrored, progress
            )
            computed = True
        parts.append(feats)
    if progress:
        how = f"computed in {time.perf_counter() - start:.1f} s" if computed else "from cache"
        tqdm.write(f"features: {split} {how}", file=sys.stdout)
    return parts[0] if len(parts) == 1 else torch.cat(parts)
