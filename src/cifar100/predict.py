"""Top-k predictions for image files, each file on its own: one that cannot be read gets its
error, and the others are still predicted. A folder stands for the images in it.

With `explain_dir`, each predicted image also gets DIR/<name>.png: what the model saw | the
same with its Grad-CAM (or occlusion) map of the predicted class over it, scaled up to be
seen, the prediction written under it and in the PNG's text.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from cifar100.data.folder_layout import is_image
from cifar100.data.hidden_names import holds_images, is_hidden, is_junk, warn_hidden
from cifar100.data.images import IMAGE_EXTENSIONS, decode_image
from cifar100.display_text import DISPLAY_LIMIT, display_name
from cifar100.errors import DataError, ModelError
from cifar100.fileio import atomic_path, check_writable
from cifar100.runtime.trained_model import Prediction, TrainedModel

__all__ = ["explanation_names", "image_files", "predict_files"]

NO_IMAGES = "a folder holding no image files (" + " ".join(sorted(IMAGE_EXTENSIONS)) + ")"


def image_files(paths: list[str | Path]) -> list[str]:
    """The paths, with each folder replaced by the image files under it (by suffix, sorted,
    hidden names and junk left out); a folder without any stays, to be reported as such."""
    return [name for name, _ in _expand(paths)]


def predict_files(
    model: TrainedModel,
    paths: list[str | Path],
    k: int = 5,
    explain_dir: str | Path | None = None,
    explain_method: str | None = None,
) -> list[Prediction]:
    """One Prediction per image, in order, named by its path (a folder: each image in it).

    explain_dir: also write each readable image's explanation there (`explanation_names`
    names them); needs a PyTorch model (a checkpoint, a run, a safetensors export)."""
    if explain_dir is not None:
        explain_method = _check_explainable(model, Path(explain_dir), explain_method)
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
        pixels = np.stack(arrays)
        for r, p in zip(good, model.predict(pixels, k)):
            r.top, r.ood_score, r.none_of_these = p.top, p.ood_score, p.none_of_these
        if explain_dir is not None:
            _write_explanations(model, pixels, good, Path(explain_dir), explain_method)
    return results


def explanation_names(names: list[str]) -> list[str]:
    """The file name of each image's explanation: its stem + .png; where stems repeat
    (cat/0001.jpg, dog/0001.jpg) the folders above join it as far as tells them apart
    (cat_0001.png, dog_0001.png), then -2, -3...; compared without case (a case-blind file
    system would write one over the other), each cut to 120 characters."""
    parts = [[p for p in Path(n).with_suffix("").parts if p not in ("/", ".", "..")] or ["image"]
             for n in names]  # fmt: skip
    depth = [1] * len(names)

    def shown(i: int) -> str:
        return "_".join(parts[i][-depth[i] :])[-120:]

    while True:  # deepen each name that collides, while it has a folder left to add
        seen: dict[str, list[int]] = {}
        for i in range(len(names)):
            seen.setdefault(shown(i).lower(), []).append(i)
        deeper = [i for same in seen.values() if len(same) > 1 for i in same
                  if depth[i] < len(parts[i])]  # fmt: skip
        if not deeper:
            break
        for i in deeper:
            depth[i] += 1
    used: set[str] = set()
    out = []
    for i in range(len(names)):
        candidate, n = shown(i), 1
        while candidate.lower() in used:
            n += 1
            candidate = f"{shown(i)}-{n}"
        used.add(candidate.lower())
        out.append(candidate + ".png")
    return out


def _check_explainable(model: TrainedModel, out: Path, method: str | None) -> str:
    """The method to use (None: gradcam, or occlusion where the model's last feature map is a
    single cell and Grad-CAM would be flat); refused before any work: an ONNX model, an
    unknown method, gradcam on a single cell, a folder that cannot be written."""
    # Captum on first use: importing it adds about 0.4 s to every predict (trained_model says)
    from cifar100.runtime.explain import METHODS, feature_map_size

    if model.module is None:
        raise ModelError(
            f"{model.source}: --explain needs the PyTorch model (Grad-CAM follows its "
            "gradients); give the run directory, its checkpoint or a safetensors export"
        )
    if method not in (None, *METHODS):
        raise ModelError(f"explanation method {method!r}: choose {' or '.join(METHODS)}")
    if method in (None, "gradcam"):
        flat = feature_map_size(model.module, model.image_size) == (1, 1)
        if flat and method == "gradcam":
            raise ModelError(
                f"{model.source}: at {model.image_size} px this model's last feature map is a "
                "single cell (1x1), so every Grad-CAM map would be flat; use --explain-method "
                "occlusion"
            )
        method = "occlusion" if flat else "gradcam"
    check_writable(out / ".explain-check", "explanation")
    return method


def _write_explanations(
    model: TrainedModel, pixels: np.ndarray, results: list[Prediction], out: Path, method: str
) -> None:
    from cifar100.runtime.explain import side_by_side  # Captum on first use, as above

    maps = model.explain(pixels, method=method)  # the predicted class of each
    for r, image, heat, file in zip(
        results, pixels, maps, explanation_names([r.name for r in results])
    ):
        label, p = r.top[0]
        caption = f"{display_name(label, DISPLAY_LIMIT)} {p:.1%} ({method})"
        if r.none_of_these:  # runtime/trust.py: unlike every class it was trained on
            caption += "; likely none of the classes"
        picture = _captioned(side_by_side(image, heat), caption)
        info = PngImagePlugin.PngInfo()  # the exact words, for a program reading the file
        info.add_itxt("prediction", f"{label} {p:.6f}")
        info.add_itxt("method", method)
        info.add_itxt("source", str(r.name))
        with atomic_path(out / file, "explanation") as tmp:
            Image.fromarray(picture).save(tmp, format="PNG", pnginfo=info)


def _captioned(picture: np.ndarray, caption: str) -> np.ndarray:
    """`picture` with a white strip under it holding `caption` (Pillow's own font)."""
    h, w = picture.shape[:2]
    size = max(12, min(20, w // 20))
    canvas = Image.new("RGB", (w, h + size + 10), "white")
    canvas.paste(Image.fromarray(picture), (0, 0))
    ImageDraw.Draw(canvas).text(
        (4, h + 4), caption, fill="black", font=ImageFont.load_default(size=size)
    )
    return np.asarray(canvas)


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
