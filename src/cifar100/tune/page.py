"""OUT/study.html: one self-contained page for a search. Optuna's own plots (optimization
history, parameter importances, parallel coordinates, drawn with matplotlib and embedded as
PNG data URIs: the page fetches nothing) and a table of every trial with its run directory.

    cifar100 tune --report --out runs/tune-cpu     # (re)writes it for an existing study
"""

from __future__ import annotations

import base64
import html
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cifar100.display_text import visible
from cifar100.fileio import write_text_atomic
from cifar100.report import STYLE

PLOTS = [
    ("history", "plot_optimization_history",
     "Optimization history: each complete trial's validation top-1 (of the weights "
     "it tests), and the best so far."),
    ("importances", "plot_param_importances",
     "Parameter importances (Optuna's fANOVA) for validation top-1, over the complete trials."),
    ("parallel", "plot_parallel_coordinate",
     "Parallel coordinates: each complete trial's settings and its value."),
]  # fmt: skip


def write_study_page(path: Path, study: optuna.Study) -> Path:
    """Write the page atomically; a plot that cannot be drawn yet is a note, not an error."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    parts = [f"<h1>cifar100 search: <bdi>{_e(study.study_name)}</bdi></h1>", _headline(trials)]
    for name, function, caption in PLOTS:
        parts.append(_plot(name, function, caption, study, complete))
    parts += ["<h2>Trials</h2>", _table(trials)]
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>cifar100 search {_e(study.study_name)}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )
    write_text_atomic(path, page)
    return path


def _headline(trials: list[FrozenTrial]) -> str:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    text = ", ".join(f"{n} {state}" for state, n in counts.items()) or "no trials yet"
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if done:
        best = max(done, key=lambda t: t.value)
        text += (f"; best: trial {best.number}, validation top-1 {best.value:.2%} "
                 "(of the weights it tests)")  # fmt: skip
    return f"<p class='headline'>{_e(text)}</p>"


def _plot(name: str, function: str, caption: str, study: optuna.Study, complete: list) -> str:
    params = {p for t in complete for p in t.params}
    if len(complete) < 2 or (name == "importances" and (len(params) < 2 or len(complete) < 3)):
        need = "two settings searched and three" if name == "importances" else "two"
        return _note(f"{caption.split(':')[0]}: drawn once {need} trials are complete "
                     f"({len(complete)} now).")  # fmt: skip
    try:
        png = _png(lambda: getattr(_optuna_plots(), function)(study))
    except Exception as e:  # noqa: BLE001 - a plot Optuna cannot draw must not lose the page
        return _note(f"{caption.split(':')[0]}: not drawn ({type(e).__name__}: {e}).")
    data = base64.b64encode(png).decode("ascii")
    return (
        f"<figure id='{name}'><img alt='{_e(caption)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _optuna_plots() -> Any:
    # Here, not above: loads matplotlib's pyplot, which only drawing the page needs.
    import optuna.visualization.matplotlib as plots

    return plots


def _png(draw: Callable[[], Any]) -> bytes:
    import matplotlib.pyplot as plt  # here, not above: pyplot only where a plot is drawn

    with warnings.catch_warnings():  # Optuna's matplotlib plots are "experimental"
        warnings.simplefilter("ignore")
        axes = draw()
    figure = getattr(axes, "figure", None) or axes.flat[0].figure
    try:
        figure.set_size_inches(8, 4.5)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        return buffer.getvalue()
    finally:
        plt.close(figure)


def _table(trials: list[FrozenTrial]) -> str:
    head = ("<tr><th>trial</th><th>state</th><th>val top-1</th><th>epochs reported</th>"
            "<th>test top-1</th><th>settings</th><th>run directory</th></tr>")  # fmt: skip
    rows = []
    for t in trials:
        value = "" if t.value is None else f"{t.value:.2%}"
        test = t.user_attrs.get("test_top1")
        state = t.state.name.lower()
        if t.user_attrs.get("interrupted"):
            state += " (interrupted; queued again)"
        elif t.user_attrs.get("error"):
            state += f": {t.user_attrs['error']}"
        settings = ", ".join(f"{k}={_short(v)}" for k, v in t.params.items())
        test = "" if test is None else f"{test:.2%}"
        epochs = len(t.intermediate_values) or ""
        cells = [t.number, state, value, epochs, test, settings, t.user_attrs.get("run_dir", "")]
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return f"<table id='trials'>{head}{''.join(rows)}</table>"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _note(text: str) -> str:
    return f"<p class='note'>{_e(text)}</p>"


def _e(text: Any) -> str:
    """Text from the study (names, paths, error messages): controls shown, HTML-escaped."""
    return html.escape(visible(str(text)), quote=True)
