"""Plots: every figure renders to a real PNG and a well-formed SVG, from small synthetic inputs."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="matplotlib is not installed")

from cifar100 import plots  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _records(n: int = 6, switch: int = 3, ema: bool = True) -> list[dict]:
    out = []
    for e in range(1, n + 1):
        r = {
            "epoch": e,
            "phase": "frozen" if e <= switch else "finetune",
            "train_loss": 2.0 / e,
            "train_top1": 0.3 + 0.1 * e,
            "lr": 0.1 * 10 ** (-e),
            "images_per_s": 1000.0,
            "val_loss": 2.2 / e,
            "val_top1": 0.25 + 0.1 * e,
            "val_top5": 0.6 + 0.05 * e,
            "epoch_s": 1.0,
        }
        if ema and e > 1:
            r |= {"val_loss_ema": 2.1 / e, "val_top1_ema": 0.27 + 0.1 * e}
        out.append(r)
    return out


def _check_files(paths: list[Path]) -> None:
    assert [p.suffix for p in paths] == [".png", ".svg"]
    png, svg = paths
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert ET.parse(svg).getroot().tag.endswith("svg")
    assert not list(png.parent.glob("*.tmp")), "a temporary file was left behind"


@pytest.fixture
def predictions() -> dict:
    """Six classes in three superclasses, 120 predictions, 80% right."""
    rng = np.random.default_rng(0)
    classes = ["apple", "pear", "cat", "dog", "bus", "car"]
    f2c = [0, 2, 1, 1, 2, 0]  # deliberately interleaved, so ordering matters
    labels = rng.integers(0, 6, 120)
    preds = np.where(rng.random(120) < 0.8, labels, rng.integers(0, 6, 120))
    images = rng.integers(0, 256, (120, 8, 8, 3), dtype=np.uint8)
    return dict(labels=labels, preds=preds, classes=classes, f2c=f2c, images=images)


@pytest.mark.slow
def test_every_figure_writes_png_and_svg(tmp_path, predictions):
    p = predictions
    figures = {
        "curves": plots.plot_curves(_records()),
        "lr": plots.plot_lr(_records()),
        "confusion": plots.plot_confusion(
            p["labels"], p["preds"], p["classes"], fine_to_coarse=p["f2c"]
        ),
        "super": plots.superclass_confusion(p["labels"], p["preds"], p["f2c"], ["a", "b", "c"]),
        "pairs": plots.plot_confused_pairs(
            plots.most_confused_pairs(p["labels"], p["preds"], p["classes"])
        ),
        "examples": plots.plot_examples(p["images"], p["labels"], p["preds"], p["classes"], n=10),
        "per_class": plots.plot_per_class({c: i / 6 for i, c in enumerate(p["classes"])}),
    }
    for name, fig in figures.items():
        _check_files(plots.save_figure(fig, tmp_path / name))


def test_lr_uses_log_scale_only_across_decades():
    assert plots.plot_lr(_records()).axes[0].get_yscale() == "log"
    flat = [r | {"lr": 0.01} for r in _records()]
    assert plots.plot_lr(flat).axes[0].get_yscale() == "linear"
    # A cosine to ~0: linear, or its last tiny value would squash the rest.
    cosine = [r | {"lr": 1e-3 * (1 + math.cos(math.pi * i / len(_records()))) / 2 + 1e-12}
              for i, r in enumerate(_records(), start=1)]  # fmt: skip
    assert plots.plot_lr(cosine).axes[0].get_yscale() == "linear"


def _scheduled_run(tmp_path: Path, train_images: int | None = 100) -> list[dict]:
    """A run directory whose config has a frozen epoch then three fine-tuning ones (3 steps an
    epoch at 100 images), with the rates its epoch ends logged; `train_images` or not."""
    from cifar100.config import apply_overrides, load_preset
    from cifar100.schedule import lr_schedule

    cfg = apply_overrides(load_preset("seed"), ["train.epochs=4", "train.freeze_epochs=1",
                                                "train.batch_size=32"])  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    schedule = lr_schedule(cfg.train, 100)
    records = [r | {"lr": schedule[3 * r["epoch"] - 1].lr} for r in _records(4, switch=1)]
    if train_images is not None:
        records = [r | {"train_images": train_images} for r in records]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


@pytest.mark.slow
def test_lr_is_drawn_per_step_by_phase_where_the_log_gives_the_step_count(tmp_path):
    records = _scheduled_run(tmp_path)
    schedule = plots.run_schedule(tmp_path, records)
    assert len(schedule) == 12
    ax = plots.plot_lr(records, schedule).axes[0]
    solid = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    assert [len(line.get_xdata()) for line in solid] == [3, 9]  # frozen, then fine-tuning
    assert list(solid[1].get_xdata())[:2] == pytest.approx([4 / 3, 5 / 3])  # fractional epochs
    dots = [line for line in ax.get_lines() if line.get_label() == "logged at epoch end"]
    assert [list(d.get_xdata()) for d in dots] == [[1, 2, 3, 4]]
    # On the line: each epoch's logged rate is its last step's.
    assert list(dots[0].get_ydata()) == [s.lr for s in schedule[2::3]]
    assert ax.get_yscale() == "linear"  # a cosine: most of it within two decades of its peak
    assert "lr" in plots.plot_run(tmp_path)


@pytest.mark.slow
def test_lr_of_a_run_logged_before_the_step_count_is_per_epoch(tmp_path):
    records = _scheduled_run(tmp_path, train_images=None)
    assert plots.run_schedule(tmp_path, records) is None
    line = plots.plot_lr(records).axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [1, 2, 3, 4]
    assert "lr" in plots.plot_run(tmp_path)  # the per-epoch figure, as before


def test_curves_mark_the_phase_change():
    fig = plots.plot_curves(_records(switch=3))
    for ax in fig.axes:
        xs = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert 3.5 in xs


@pytest.mark.slow
def test_plot_run_with_only_a_metrics_log(tmp_path):
    lines = [json.dumps(r) for r in _records()]
    # A crash mid-write leaves half a record: it must be skipped, not fail the plot.
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"epoch": 7, "phase": "fin')
    written = plots.plot_run(tmp_path)
    assert set(written) == {"curves", "lr"}
    for paths in written.values():
        _check_files(paths)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "curves.png",
        "curves.svg",
        "lr.png",
        "lr.svg",
    ]


@pytest.mark.slow
def test_plot_run_with_predictions(tmp_path, predictions):
    # 30 images keep the two example grids (the slowest figures) small.
    p = {k: v[:30] if isinstance(v, np.ndarray) else v for k, v in predictions.items()}
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()))
    logits = np.eye(6, dtype=np.float32)[p["preds"]]
    np.savez(
        tmp_path / "predictions.npz",
        labels=p["labels"],
        logits=logits,
        classes=np.array(p["classes"]),
        coarse_classes=np.array(["fruit", "pet", "vehicle"]),
        fine_to_coarse=np.array(p["f2c"]),
        images=p["images"],
    )
    written = plots.plot_run(tmp_path)
    assert set(written) == {
        "curves",
        "lr",
        "confusion",
        "superclass_confusion",
        "confused_pairs",
        "examples",
        "mistakes",
        "per_class",
    }
    for paths in written.values():
        _check_files(paths)


def test_most_confused_pairs_hand_made():
    classes = ["a", "b", "c"]
    # true -> predicted: b->c three times, a->b twice, c->a twice, a->c once; plus correct ones.
    pairs = [(1, 2)] * 3 + [(0, 1)] * 2 + [(2, 0)] * 2 + [(0, 2)] + [(0, 0)] * 5 + [(1, 1)] * 4
    labels, preds = np.array(pairs).T
    assert plots.most_confused_pairs(labels, preds, classes) == [
        ("b", "c", 3),
        ("a", "b", 2),  # ties: by true class, then predicted class
        ("c", "a", 2),
        ("a", "c", 1),
    ]
    assert plots.most_confused_pairs(labels, preds, classes, k=2) == [("b", "c", 3), ("a", "b", 2)]
    assert plots.most_confused_pairs(labels, labels, classes) == []


def test_superclass_order_groups_classes():
    f2c = [3, 0, 1, 0, 3, 1, 2, 2]
    order = plots.superclass_order(f2c)
    assert sorted(order) == list(range(8))
    groups = [f2c[i] for i in order]
    assert groups == sorted(groups)
    assert order == [1, 3, 2, 5, 6, 7, 0, 4]  # stable within a group


def test_confusion_is_row_normalised_and_reordered():
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 0, 1, 1, 1, 0])
    fig = plots.plot_confusion(labels, preds, ["x", "y", "z"], order=[2, 1, 0])
    matrix = fig.axes[0].get_images()[0].get_array()
    np.testing.assert_allclose(matrix.sum(axis=1), 1)
    np.testing.assert_allclose(matrix[2], [0, 0.25, 0.75])  # row for "x", columns z, y, x
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["z", "y", "x"]


def test_reliability_diagram_from_calibration_bins(tmp_path):
    calibration = {"ece": 0.05, "bins": [
        {"lower": i / 15, "upper": (i + 1) / 15, "count": c,
         "confidence": (i + 0.5) / 15 if c else None, "accuracy": 0.5 if c else None}
        for i, c in enumerate([0] * 10 + [5, 0, 7, 9, 20])]}  # fmt: skip
    fig = plots.plot_reliability(calibration)
    assert "0.050" in fig.axes[0].get_title()
    files = plots.save_figure(fig, tmp_path / "reliability")
    assert [f.suffix for f in files] == [".png", ".svg"] and all(f.stat().st_size for f in files)


@pytest.mark.slow
def test_reliability_draws_before_and_after_temperature_scaling(tmp_path):
    def record(ece: float, shift: float) -> dict:
        bins = [{"lower": i / 15, "upper": (i + 1) / 15, "count": 10 * (i > 4),
                 "confidence": (i + 0.5) / 15 if i > 4 else None,
                 "accuracy": (i + 0.5) / 15 - shift if i > 4 else None}
                for i in range(15)]  # fmt: skip
        return {"ece": ece, "nll": 1.0, "brier": 0.5, "bins": bins}

    calibration = record(0.08, 0.08) | {"temperature": 1.42, "calibrated": record(0.011, 0.0)}
    fig = plots.plot_reliability(calibration)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["As trained — ECE 0.080", "After temperature 1.42 — ECE 0.011"]
    _check_files(plots.save_figure(fig, tmp_path / "reliability"))
    # A record where the model was not calibrated (temperature null): one panel, as before.
    plain = record(0.08, 0.08) | {"temperature": None, "calibrated": None}
    assert [ax.get_title() for ax in plots.plot_reliability(plain).axes] == [
        "Reliability — ECE 0.080"
    ]


def test_explained_images_are_the_confident_mistakes_and_the_best_right_per_class():
    from cifar100.plots.explanations import MISTAKES, pick_explained

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    probabilities = rng.dirichlet(np.ones(3), 60)
    available = np.arange(0, 60, 2)  # the images predictions.npz keeps
    mistakes, right = pick_explained(labels, probabilities, available)
    preds, confidence = probabilities.argmax(1), probabilities.max(1)
    assert set(mistakes) <= set(available) and len(mistakes) == MISTAKES
    assert (preds[mistakes] != labels[mistakes]).all()
    assert list(confidence[mistakes]) == sorted(confidence[mistakes], reverse=True)
    worst_left_out = [i for i in available if preds[i] != labels[i] and i not in mistakes]
    assert confidence[worst_left_out].max() <= confidence[mistakes].min()
    assert (preds[right] == labels[right]).all() and set(right) <= set(available)
    for c in range(3):  # two a class (10 classes or fewer), its most confident
        mine = [i for i in available if labels[i] == c and preds[i] == c]
        best = sorted(mine, key=lambda i: -confidence[i])[:2]
        assert sorted(right[labels[right] == c]) == sorted(best)
    many = rng.dirichlet(np.ones(100), 400)  # CIFAR-100: one a class, 20 classes at most
    _, right = pick_explained(many.argmax(1), many, np.arange(400))
    assert len(right) == 20 and len(set(many.argmax(1)[right])) == 20


@pytest.mark.slow
def test_explanation_grid_titles_say_given_and_predicted(tmp_path):
    from cifar100.plots.explanations import plot_explanations

    pictures = [np.zeros((16, 36, 3), np.uint8)] * 5
    fig = plot_explanations(pictures, [0, 1, 2, 0, 1], [0, 2, 2, 1, 1], [0.9, 0.8, 0.7, 0.6, 0.5],
                            ["cat", "$dog$", "bus"], "Five")  # fmt: skip
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titled[1] == "given \\$dog\\$\npredicted bus 80%" and len(titled) == 5
    _check_files(plots.save_figure(fig, tmp_path / "explained"))


def test_the_lr_legend_sits_below_the_axes_not_over_the_schedule():
    """Inside the axes it covered the warm-up ramp (issue 19, item 11)."""
    from cifar100.config import TrainConfig
    from cifar100.schedule import lr_schedule

    t = TrainConfig(epochs=6, freeze_epochs=1, warmup_epochs=1, lr=0.02, head_lr=0.001)
    schedule = lr_schedule(t, 5000)
    per_epoch = len(schedule) // t.epochs
    records = [{"epoch": e + 1, "lr": schedule[(e + 1) * per_epoch - 1].lr} for e in range(6)]
    fig = plots.plot_lr(records, schedule)
    assert fig.axes[0].get_legend() is None and len(fig.legends) == 1
    fig.canvas.draw()  # the legend's box is known once drawn
    legend = fig.legends[0].get_window_extent()
    assert legend.y1 <= fig.axes[0].get_window_extent().y0  # wholly below the plot
