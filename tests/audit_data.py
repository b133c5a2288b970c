"""A small image folder for audit tests: classes are crops of different photos (skimage's
sample images), with labels flipped and copies planted where the test says."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def photo_crops(per_class: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x size x size x 3, labels): random crops, scales and flips of each photo."""
    from skimage import data

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(PHOTOS):
        photo = Image.fromarray(getattr(data, name)()).convert("RGB")
        w, h = photo.size
        for _ in range(per_class):
            side = int(rng.integers(min(w, h) // 6, min(w, h) // 2))
            x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
            crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            images.append(np.asarray(crop))
            labels.append(label)
    return np.stack(images), np.array(labels)


def near_copy(image: np.ndarray) -> np.ndarray:
    """The same picture a little brighter and saved as a JPEG: what re-uploads look like."""
    brighter = np.clip(image.astype(np.int16) + 10, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(brighter).save(buffer, format="JPEG", quality=90)
    return np.asarray(Image.open(buffer).convert("RGB"))


def write_folder(root: Path, split: str, images: np.ndarray, labels: np.ndarray) -> list[str]:
    """PNG files root/split/CLASS/NNNN.png; returns their paths relative to root, in order."""
    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        rel = f"{split}/{PHOTOS[label]}/{i:04d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / rel)
        paths.append(rel)
    return paths
