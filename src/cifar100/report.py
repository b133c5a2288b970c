"""One self-contained HTML page for a run: the model table, config, environment, metrics, plots.

    cifar100 report runs/<run>          # writes runs/<run>/report.html; opens offline

Everything comes from the run directory's files, so an interrupted run can be reported too.
Images are embedded as data URIs: the page needs no network and no other file.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from cifar100.corruption_report import corruption_records, corruption_section
from cifar100.display_text import visible
from cifar100.errors import CheckpointError
from cifar100.fileio import write_text_atomic
from cifar100.runtime.evaluation import Evaluation
from cifar100.runtime.run_dir import BEST, RunDir

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 70rem;
       padding: 0 1rem; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5rem 0; }
td, th { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
pre { background: #f7f7f7; padding: 0.8rem; overflow-x: auto; font-size: 13px; }
figure { margin: 1rem 0; } figcaption { color: #555; font-size: 13px; }
img { max-width: 100%; border: 1px solid #eee; }
table { display: block; max-width: 100%; overflow-x: auto; }  /* scrolls itself, not the page */
@media (max-width: 600px) {  /* a phone: plots at a readable size, panned within their frame */
  body { margin: 1rem auto; font-size: 14px; }
  figure { overflow-x: auto; } figure img { max-width: none; width: 640px; }
}
.headline { font-size: 1.3rem; margin: 0.6rem 0 1rem; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5rem 0.8rem; }
"""


def build_report(run_dir: str | Path, plots: bool = True) -> Path:
    """Write RUN_DIR/report.html and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "not a directory" if run_dir.exists() else "no such directory"
        raise CheckpointError(f"{run_dir}: {what}; give a run directory (cifar100 train "
                              "writes them under runs/)")  # fmt: skip
    run = RunDir(run_dir)
    if not run.is_run():
        raise CheckpointError(f"{run_dir}: no {run.config.name}; not a cifar100 run directory")
    # A damaged config.json or evaluation.json is one line naming it (not a page built on
    # half of it); environment.json only fills a table, so a damaged one is left out.
    config = run.read_config_json()
    environment = run.read_environment() or {}
    evaluation = Evaluation.read_complete(run.evaluation)
    records = run.read_metrics()
    figures = _make_plots(run_dir) if plots else {}

    # <bdi>: a right-to-left name stays in its own box, not reordering the words around it.
    title = f"cifar100 run: <bdi>{_e(run_dir.name)}</bdi>"
    parts = [f"<h1>{title}</h1>", _headline(config, evaluation, records)]
    parts += ["<h2>Model</h2>", f"<pre>{_e(_model_table(config, evaluation))}</pre>"]
    parts += ["<h2>Training</h2>", _metrics_table(records)]
    parts += [_figure(figures, name, caption) for name, caption in CAPTIONS if name in figures]
    parts += [_missing(run_dir, config, evaluation, records)]
    if evaluation:
        parts += ["<h2>Test set</h2>", _evaluation_table(evaluation)]
        parts += [_calibration_table(evaluation.calibration)]
    variants = _variants(run)
    if variants:
        parts += ["<h3>Other evaluations</h3>", _variants_table(evaluation, variants)]
    corrupted = corruption_records(run)
    if corrupted:
        plot = "corruptions" in figures and _figure(figures, "corruptions", CORRUPTIONS_CAPTION)
        parts += [corruption_section(corrupted, plot or "")]
    if plots and evaluation and run.predictions.is_file():  # else _missing says what to run
        parts += ["<h2 id='explain'>Where the model looked</h2>", _explanations(run_dir)]
    # Other scripts as themselves (ensure_ascii would write CJK as \u escapes); _e shows the
    # controls among them.
    config_text = json.dumps(config, indent=2, ensure_ascii=False)
    environment_text = json.dumps(environment, indent=2, ensure_ascii=False)
    parts += ["<h2>Configuration</h2>", f"<pre>{_e(config_text)}</pre>"]
    parts += ["<h2>Environment</h2>", f"<pre>{_e(environment_text)}</pre>"]
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>cifar100 run {_e(run_dir.name)}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )
    out = run.report
    write_text_atomic(out, page)
    return out


CAPTIONS = [
    ("curves", "Loss and accuracy per epoch, training and validation (the report's figures)."),
    ("lr", "Learning rate per step, by phase; dots: the rate logged at each epoch's end."),
    ("confusion", "Confusion matrix of the test set, rows normalised."),
    ("superclass_confusion", "Confusion between the 20 superclasses."),
    ("confused_pairs", "The most frequent confusions (true -> predicted)."),
    ("per_class", "Test accuracy per class."),
    ("reliability", "Reliability diagram: accuracy against confidence (calibration)."),
    ("examples", "Test images with true and predicted labels (green right, red wrong)."),
    ("mistakes", "Misclassified test images only."),
]


CORRUPTIONS_CAPTION = (
    "Test top-1 under each corruption against its severity, one panel per family; dashed: "
    "the same images uncorrupted."
)


def _make_plots(run_dir: Path) -> dict[str, Path]:
    """PNG of every plot the run's files allow (cifar100.plots.plot_run decides which)."""
    from cifar100.plots import plot_run  # matplotlib on first use: --no-plots never needs it

    made = plot_run(run_dir)
    return {name: next(p for p in files if p.suffix == ".png") for name, files in made.items()}


def _figure(figures: dict[str, Path], name: str, caption: str) -> str:
    data = base64.b64encode(figures[name].read_bytes()).decode("ascii")
    return (
        f"<figure id='{name}'><img alt='{_e(caption)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _explanations(run_dir: Path) -> str:
    """Grad-CAM over the most confident mistakes and some right answers (plots/explanations),
    or a note saying why there are none."""
    from cifar100.plots.explanations import explain_run  # matplotlib and torch on first use

    found = explain_run(run_dir)
    if found.feature_map == (1, 1):  # what the model is, not something missing
        return f"<p>No heatmaps: {_e(found.note)}.</p>"
    if found.note:
        return f"<p class='note'>No heatmaps: {_e(found.note)}.</p>"
    rows, cols = found.feature_map or (0, 0)
    grid = f" The backbone's last feature map is {rows}&times;{cols} here, scaled up smoothly."
    if 0 < max(rows, cols) <= 4:
        grid += (
            " So coarse a map tells which part of the image, not which pixels; <code>cifar100 "
            "predict --explain DIR --explain-method occlusion</code> gives finer maps of "
            "chosen images."
        )
    intro = (
        "<p>Each pair: on the left the test image as the model saw it, on the right the same "
        "tinted by the Grad-CAM map of the <em>predicted</em> class: the redder, the more the "
        "prediction rests there. Titles: the given label, the predicted one and its "
        "probability. Chosen from the whole test set by the evaluation that wrote "
        "predictions.npz (one written before this version: from the images it keeps)."
        f"{grid}</p>"
    )
    captions = {
        "explain_mistakes": "The most confident mistakes: where the model saw the wrong class.",
        "explain_correct": "Confident right answers, one or two per class.",
    }
    figures = [_figure(found.figures, name, captions[name]) for name in found.figures]
    return intro + "".join(figures)


def _headline(config: dict, evaluation: Evaluation | None, records: list[dict]) -> str:
    m, d = config.get("model", {}), config.get("data", {})
    words = [
        f"preset <b>{_e(config.get('preset', '?'))}</b>",
        f"{_e(m.get('backbone', '?'))} ({_e(m.get('weights', '?'))})",
        f"data {_e(d.get('dataset', '?'))}",
        f"{len(records)} of {_e(config.get('train', {}).get('epochs', '?'))} epochs",
    ]
    stop = evaluation.early_stopping if evaluation else None
    if stop:
        words.append(_early_stop_words(stop))
    elif evaluation and evaluation.checkpoint:
        words.append(_final_words(evaluation, len(records)))
    if evaluation:
        top5 = evaluation.top5  # none for 5 classes or fewer
        words.append(f"test top-1 <b>{evaluation.top1:.2%}</b>"
                     + (f", top-5 {_fmt(top5, '{:.2%}')}" if top5 is not None else ""))  # fmt: skip
    return f"<p class='headline'>{' &middot; '.join(words)}</p>"


def _final_words(evaluation: Evaluation, epochs: int) -> str:
    """The headline's words for the weights the run's test used: train.final's record, or
    for an evaluation `cifar100 evaluate` wrote since, the checkpoint it names."""
    final = evaluation.final or {
        "weights": "best" if Path(evaluation.checkpoint).name == BEST else "last",
        "epoch": evaluation.epoch,
        "of_epochs": epochs,
    }
    epoch, of = _e(final.get("epoch", "?")), _e(final.get("of_epochs", "?"))
    if final.get("weights") == "best":
        last = ", also the last" if final.get("epoch") == final.get("of_epochs") else ""
        return f"tested on the best validated weights: epoch {epoch} of {of}{last}"
    why = final.get("note") or ("as asked (--final last)" if final.get("setting") == "last" else "")
    return f"tested on the last weights, epoch {epoch}" + (f": {_e(why)}" if why else "")


def _early_stop_words(stop: dict) -> str:
    """The headline's words for a run train.early_stopping ended."""
    tested = "tested on the best, epoch " if stop.get("tested") == "best" else "best: epoch "
    return (
        f"<b>stopped early</b> after epoch {_e(stop.get('after_epoch', '?'))} "
        f"(no validation gain in {_e(stop.get('patience', '?'))} epochs; "
        f"{tested}{_e(stop.get('best_epoch', '?'))})"
    )


def _model_table(config: dict, evaluation: Evaluation | None) -> str:
    """The report's layer table for this run's model, without loading any weights."""
    # torch on first use, as plots above: the page's text needs neither
    from cifar100.config import from_dict
    from cifar100.models.registry import build_model
    from cifar100.models.summary import format_summary

    cfg = from_dict(config, preset=config.get("preset", "custom"))
    cfg.model.weights, cfg.model.init = "none", None
    n = {"cifar100": 100 if cfg.data.label == "fine" else 20, "cifar10": 10}.get(cfg.data.dataset)
    if n is None and evaluation and evaluation.per_class:
        n = len(evaluation.per_class)  # an image-folder run: its classes, as evaluated
    if n is None:
        return "(image-folder run not yet evaluated: `cifar100 evaluate` gives its class count)"
    size = 32 if cfg.data.dataset != "folder" else cfg.data.image_size
    return format_summary(build_model(cfg.model, num_classes=n), size)


def _metrics_table(records: list[dict]) -> str:
    if not records:
        return "<p>No epoch has finished yet.</p>"
    cols = [("epoch", "{}"), ("phase", "{}"), ("train_loss", "{:.4f}"), ("train_top1", "{:.2%}"),
            ("val_loss", "{:.4f}"), ("val_top1", "{:.2%}"), ("val_top5", "{:.2%}"),
            ("lr", "{:.2e}"), ("images_per_s", "{:.0f}"), ("epoch_s", "{:.1f}")]  # fmt: skip
    if not any("val_top5" in r for r in records):  # 5 classes or fewer: no top-5 logged
        cols = [c for c in cols if c[0] != "val_top5"]
    head = "".join(f"<th>{c}</th>" for c, _ in cols)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_fmt(r.get(c), f)}</td>" for c, f in cols) + "</tr>"
        for r in records
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def _missing(
    run_dir: Path, config: dict, evaluation: Evaluation | None, records: list[dict]
) -> str:
    """Why figures are absent, and the command that brings them, where they are."""
    epochs = config.get("train", {}).get("epochs", "?")
    if not evaluation:
        why = (
            f"training stopped after {len(records)} of {epochs} epochs"
            if len(records) != epochs
            else "it has no evaluation.json"
        )
        todo = f"<code>cifar100 train --resume {_e(run_dir)}</code> finishes it, or "
        todo = todo if len(records) != epochs else ""
        return (
            f"<p class='note'>Not tested yet: {_e(why)}. {todo}<code>cifar100 evaluate "
            f"{_e(run_dir)}</code> tests its final weights (best.pt unless it was trained with "
            "--final last) and adds the test figures.</p>"
        )
    predictions = RunDir(run_dir).predictions
    if not predictions.is_file():
        return (
            f"<p class='note'>No {predictions.name} in the run directory, so no confusion matrix "
            f"or example images: <code>cifar100 evaluate {_e(run_dir)}</code> writes it, "
            "then report again.</p>"
        )
    return ""


VARIANT_WORDS = {
    "best": "best checkpoint",
    "last": "last checkpoint",
    "ema": "EMA weights",
    "tta": "flip TTA",
}


def _variants(run: RunDir) -> list[tuple[str, Evaluation]]:
    """The run's other evaluations (evaluate --checkpoint best, --ema, --tta flip), by name;
    then those of its model files (evaluate runs/x/model.onnx), by the file's name."""
    found = []
    for words, path in run.variant_evaluations():
        e = Evaluation.read_if_usable(path)
        if all(w in VARIANT_WORDS for w in words) and e is not None:
            found.append((", ".join(VARIANT_WORDS[w] for w in words), e))
    return found + _file_evaluations(run)


def _file_evaluations(run: RunDir) -> list[tuple[str, Evaluation]]:
    """Each evaluated model file's evaluations, named by the file the record names; a file's
    own (model.onnx.eval.json) before the old shared name (model.eval.json) says the same."""
    read = [(p, Evaluation.read_if_usable(p)) for p in run.file_evaluations()]
    usable = [(p, e) for p, e in read if e is not None and e.checkpoint]
    usable.sort(key=lambda pe: not pe[0].name.startswith(Path(pe[1].checkpoint).name + "."))
    found: dict[str, Evaluation] = {}
    for _, e in usable:
        words = [Path(e.checkpoint).name]
        words += ["EMA weights"] if e.record.get("weights") == "ema" else []
        words += ["flip TTA"] if e.record.get("tta") == "flip" else []
        found.setdefault(", ".join(words), e)
    return list(found.items())


def _variants_table(plain: Evaluation | None, variants: list[tuple[str, Evaluation]]) -> str:
    has5 = any(e.top5 is not None for _, e in variants)
    head = "<tr><th>evaluation</th><th>top-1</th>" + ("<th>top-5</th>" if has5 else "")
    head += "<th>loss</th><th>top-1 against the plain one</th></tr>"
    rows = []
    for name, e in variants:
        delta = f"{(e.top1 - plain.top1) * 100:+.2f} points" if plain else ""
        top5 = f"<td>{_fmt(e.top5, '{:.2%}')}</td>" if has5 else ""
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{e.top1:.2%}</td>{top5}"
            f"<td>{_fmt(e.record.get('loss'), '{:.4f}')}</td><td>{_e(delta)}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _evaluation_table(e: Evaluation) -> str:
    m = e.record  # shown as written: _fmt shows a value of another type as text
    rows = [("images", m.get("images"), "{}"), ("top-1", e.top1, "{:.2%}"),
            ("top-5", e.top5, "{:.2%}"), ("loss", m.get("loss"), "{:.4f}"),
            ("macro-F1", m.get("macro_f1"), "{:.4f}"),
            ("superclass top-1", m.get("superclass_top1"), "{:.2%}"),
            ("EMA weights top-1", e.ema.get("top1"), "{:.2%}")]  # fmt: skip
    body = "".join(
        f"<tr><td>{_e(k)}</td><td>{_fmt(v, spec)}</td></tr>" for k, v, spec in rows if v is not None
    )
    return f"<table>{body}</table>"


def _calibration_table(calibration: dict | None) -> str:
    """ECE, NLL and Brier score as trained and after temperature scaling, where the record has
    them (a record from before calibration has the ECE alone: shown in the plot as before)."""
    if not calibration or "calibrated" not in calibration:
        return ""
    after = calibration.get("calibrated")
    after = after if isinstance(after, dict) else None
    t = calibration.get("temperature")
    head = "<tr><th>calibration</th><th>as trained</th>"
    head += f"<th>after temperature {_fmt(t, '{:.3f}')}</th>" if after else ""
    rows = []
    for key, name in (("ece", "ECE"), ("nll", "NLL"), ("brier", "Brier score")):
        cells = f"<td>{_fmt(calibration.get(key), '{:.4f}')}</td>"
        cells += f"<td>{_fmt(after.get(key), '{:.4f}')}</td>" if after else ""
        rows.append(f"<tr><td>{name}</td>{cells}</tr>")
    return f"<table id='calibration'>{head}</tr>{''.join(rows)}</table>"


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return ""
    try:
        return _e(spec.format(value))
    except (ValueError, TypeError):
        return _e(str(value))


def _e(text: Any) -> str:
    """Text for the page: its controls shown (display_text.visible: a right-to-left override
    in a run or folder name would reorder what is read), then HTML-escaped."""
    return html.escape(visible(str(text)), quote=True)
