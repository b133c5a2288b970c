"""Where the model looked, for the report: Grad-CAM maps of the predicted class over the test
images that predictions.npz keeps, for the most confident mistakes and a few confident right
answers per class, each titled given / predicted (probability).

    found = explain_run(Path("runs/x"))   # found.figures: name -> PNG; found.note: why none

The maps need the model (the run's checkpoint, loaded on the CPU), so the work is capped: at
most MISTAKES + MAX_CLASSES * PER_CLASS images, a few seconds even for ResNet50V2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cifar100.errors import CifarError
from cifar100.plots.figure import plain_text, plot_names, save_figure
from cifar100.plots.predictions import CORRECT, WRONG
from cifar100.predictions_file import read_predictions
from cifar100.runtime.evaluation import Evaluation
from cifar100.runtime.run_dir import BEST, LAST, RunDir

__all__ = ["Explained", "explain_run", "pick_explained", "plot_explanations"]

MISTAKES = 8  # the most confident mistakes shown
MAX_CLASSES = 20  # classes with right answers shown (CIFAR-100: the page stays light)
COLUMNS = 4  # pictures (image | map) a row
TITLE_LIMIT = 22  # characters of a class name in a title
FLAT = (
    "at {size} px the backbone's last feature map is a single cell (1x1), so Grad-CAM has "
    "nothing to locate: every map would be flat. Models that upsample (model.resize > 1, as "
    "the pretrained presets do) get a map; cifar100 predict --explain DIR --explain-method "
    "occlusion explains chosen images of this one"
)


@dataclass
class Explained:
    """The report's "where the model looked": its figures, or the note saying why not."""

    figures: dict[str, Path] = field(default_factory=dict)  # name -> PNG
    note: str | None = None
    feature_map: tuple[int, int] | None = None  # the map's own resolution, before scaling up


def pick_explained(
    labels: np.ndarray, probabilities: np.ndarray, available: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into labels) of the most confident mistakes, most confident first, and of the
    most confident right answers of each class (2 a class for 10 classes or fewer, else 1;
    the first MAX_CLASSES classes that have one), among the `available` images."""
    preds = probabilities.argmax(1)
    confidence = probabilities.max(1)
    wrong = available[preds[available] != labels[available]]
    mistakes = wrong[np.argsort(-confidence[wrong], kind="stable")][:MISTAKES]
    per_class = 2 if probabilities.shape[1] <= 10 else 1
    right = available[preds[available] == labels[available]]
    right = right[np.argsort(-confidence[right], kind="stable")]
    picked: list[int] = []
    for c in np.unique(labels[right])[:MAX_CLASSES]:
        picked += right[labels[right] == c][:per_class].tolist()
    return mistakes, np.array(picked, dtype=np.int64)


@plain_text
def plot_explanations(
    pictures: Sequence[np.ndarray],
    labels: Sequence[int],
    preds: Sequence[int],
    confidences: Sequence[float],
    classes: Sequence[str],
    title: str,
) -> Figure:
    """A grid of pictures (runtime/explain.side_by_side: image | map), each titled "given /
    predicted probability", green where right and red where wrong."""
    n = len(pictures)
    cols = min(COLUMNS, max(1, n))
    rows = -(-n // cols)
    fig = Figure(figsize=(2.9 * cols, 1.95 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    shown = plot_names(classes, TITLE_LIMIT)
    for ax in axes:
        ax.set_axis_off()
    for ax, picture, y, p, conf in zip(axes, pictures, labels, preds, confidences):
        ax.imshow(picture, interpolation="nearest")  # already scaled up by whole pixels
        ax.set_title(
            f"given {shown[y]}\npredicted {shown[p]} {conf:.0%}",
            fontsize=9,
            color=CORRECT if y == p else WRONG,
        )
    fig.suptitle(title, fontsize=10)
    return fig


def explain_run(run_dir: str | Path) -> Explained:
    """Write run_dir/plots/explain_mistakes.png and explain_correct.png (and SVGs) from
    predictions.npz and the checkpoint evaluation.json names; or say why not."""
    run = RunDir(run_dir)
    if not run.predictions.is_file():
        return Explained(note=f"no {run.predictions.name} in the run directory")
    arrays = read_predictions(run.predictions)
    if "images" not in arrays:
        return Explained(note=f"{run.predictions.name} keeps no test images")
    try:
        model = _load_model(run)
        # Captum on first use (0.4 s): a report without predictions never needs it
        from cifar100.runtime.explain import feature_map_size

        grid = feature_map_size(model.module, model.image_size)
        if grid == (1, 1):
            return Explained(note=FLAT.format(size=model.image_size), feature_map=grid)
        found = Explained(feature_map=grid)
        for name, picked, title in _chosen(model, arrays):
            if len(picked):
                fig = _figure(model, arrays, picked, title)
                found.figures[name] = save_figure(fig, run.plots / name)[0]
    except CifarError as e:
        return Explained(note=f"the model could not explain its test images: {e}")
    if not found.figures:
        found.note = f"none of the test images {run.predictions.name} keeps is left to explain"
    return found


def _chosen(model, arrays: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray, str]]:
    """(figure name, picked test images, title) of each figure."""
    _, available = _stored_images(arrays)
    mistakes, right = pick_explained(arrays["labels"], _probabilities(model, arrays), available)
    return [
        ("explain_mistakes", mistakes, f"The {len(mistakes)} most confident mistakes"),
        ("explain_correct", right, "Confident right answers, by class"),
    ]


def _probabilities(model, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The probabilities the model gives (calibrated, where it was) of the logits tested."""
    return model.scores(arrays["logits"]).probabilities.numpy()


def _figure(model, arrays: dict[str, np.ndarray], picked: np.ndarray, title: str) -> Figure:
    from cifar100.runtime.explain import side_by_side  # Captum on first use (0.4 s)

    images, _ = _stored_images(arrays)
    labels, probabilities = arrays["labels"], _probabilities(model, arrays)
    preds = probabilities.argmax(1)
    maps = model.explain(images[picked], class_index=preds[picked].tolist())
    pictures = [side_by_side(model.prepare(images[i : i + 1])[0], m) for i, m in zip(picked, maps)]
    classes = [str(c) for c in arrays["classes"]]
    return plot_explanations(
        pictures,
        labels[picked],
        preds[picked],
        probabilities.max(1)[picked],
        classes,
        title + ", Grad-CAM of the predicted class",
    )


def _load_model(run: RunDir):
    """The checkpoint the predictions came from (evaluation.json says which: last or best),
    on the CPU."""
    # torch on first use, as the report's model table: the page's text needs neither
    from cifar100.runtime.trained_model import load

    evaluation = Evaluation.read_if_usable(run.evaluation)
    tested = Path(evaluation.checkpoint).name if evaluation and evaluation.checkpoint else LAST
    return load(run.path, device="cpu", checkpoint="best" if tested == BEST else "last")


def _stored_images(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The test images indexed like the labels (zeros where not kept), and which are kept."""
    images = arrays["images"]
    if "image_index" not in arrays:
        return images, np.arange(len(images))
    full = np.zeros((len(arrays["labels"]), *images.shape[1:]), dtype=images.dtype)
    full[arrays["image_index"]] = images
    return full, np.asarray(arrays["image_index"], dtype=np.int64)
