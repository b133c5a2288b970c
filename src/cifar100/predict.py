"""Top-k predictions for image files, each file on its own: one that cannot be read gets its
error, and the others are still predicted. A folder stands for the images in it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cifar100.data.folder_layout import is_image
from cifar100.data.hidden_names import holds_images, is_hidden, is_junk, warn_hidden
from cifar100.data.images import IMAGE_EXTENSIONS, decode_image
from cifar100.errors import DataError
from cifar100.runtime.trained_model import Prediction, TrainedModel

__all__ = ["image_files", "predict_files"]

NO_IMAGES = "a folder holding no image files (" + " ".join(sorted(IMAGE_EXTENSIONS)) + ")"


def image_files(paths: list[str | Path]) -> list[str]:
    """The paths, with each folder replaced by the image files under it (by suffix, sorted,
    hidden names and junk left out); a folder without any stays, to be reported as such."""
    return [name for name, _ in _expand(paths)]


def predict_files(model: TrainedModel, paths: list[str | Path], k: int = 5) -> list[Prediction]:
    """One Prediction per image, in order, named by its path (a folder: each image in it)."""
    results = []
    good, arrays = [], []
    for name, error in _expand(paths):
        r = Prediction(name=name, error=error)
        results.append(r)
        if error is not None:
            continue
        try:
            arrays.append(decode_image(Path(name), model.image_size, name=name))
            good.append(r)
        except DataError as e:
            # The result carries the name: its error says what went wrong, not where again.
            r.error = str(e).removeprefix(f"{name}: ")
    if arrays:
        for r, p in zip(good, model.predict(np.stack(arrays), k)):
            r.top, r.ood_score, r.none_of_these = p.top, p.ood_score, p.none_of_these
    return results


def _expand(paths: list[str | Path]) -> list[tuple[str, str | None]]:
    """(path, None) for each file to predict, a folder's images in its place; (folder, why)
    for a folder that gives none."""
    out: list[tuple[str, str | None]] = []
    for p in map(Path, paths):
        try:
            is_dir = p.is_dir()
        except OSError:  # a name too long, a symlink loop...: decode_image says which
            is_dir = False
        if not is_dir:
            out.append((str(p), None))
            continue
        try:
            found, hidden = _folder_images(p)
        except OSError as e:
            out.append((str(p), f"cannot read {e.filename or 'folder'} ({e.strerror or e})"))
            continue
        warn_hidden(p, hidden)  # as an image folder for training says it
        out.extend((f, None) for f in found)
        if not found:
            out.append((str(p), NO_IMAGES))
    return out


def _folder_images(folder: Path) -> tuple[list[str], list[str]]:
    """The image files under `folder` (by suffix, sorted), and the names starting with '.'
    left out as hidden that are images or hold some (relative to `folder`); junk is skipped
    without a word, as in image folders (hidden_names.is_junk)."""
    found, hidden = [], []

    def fail(error: OSError) -> None:
        raise error

    for d, dirs, files in os.walk(folder, onerror=fail):
        rel = Path(d).relative_to(folder)
        hidden += [f"{rel / x}/" for x in dirs if is_hidden(x) and holds_images(Path(d, x))]
        dirs[:] = [x for x in dirs if not x.startswith(".") and not is_junk(x)]
        for f in filter(is_image, files):
            if is_hidden(f):
                hidden.append(str(rel / f))
            elif not is_junk(f):
                # Not checked to be a regular file: a FIFO or a broken link named .png gets
                # its own error rather than being lost.
                found.append(os.path.join(d, f))
    return sorted(found), sorted(hidden)
