"""The report's "Under corruption" section: what `cifar100 evaluate RUN --corruptions` measured
(evaluation-corruptions.json), and beside it what the run's model files measured
(model.onnx.eval-corruptions.json, model.int8.onnx.eval-corruptions.json), so that an int8
export's losses show per corruption."""

from __future__ import annotations

import html
from pathlib import Path

from cifar100.display_text import visible
from cifar100.runtime.corruption_evaluation import CorruptionEvaluation
from cifar100.runtime.run_dir import RunDir


def corruption_records(run: RunDir) -> list[tuple[str, CorruptionEvaluation]]:
    """(name, record) of the run's own corruption evaluation, then of each model file's, each
    named by the file its record names (last.pt, model.onnx)."""
    found = []
    own = CorruptionEvaluation.read_if_usable(run.corruption_evaluation)
    if own is not None:
        found.append((Path(own.checkpoint).name or "the run's checkpoint", own))
    for path in sorted(run.file_corruption_evaluations(), key=_fp32_first):
        e = CorruptionEvaluation.read_if_usable(path)
        if e is not None:
            found.append((Path(e.checkpoint).name or path.name, e))
    return found


def _fp32_first(path: Path) -> tuple[str, bool]:
    """Sorts model.onnx before model.int8.onnx: the fp32 column first, as the difference reads."""
    return path.name.replace(".int8.", "."), ".int8." in path.name


def corruption_section(records: list[tuple[str, CorruptionEvaluation]], figure: str) -> str:
    """The section's HTML (empty without records); `figure`: the plot's <figure>, or ""."""
    if not records:
        return ""
    parts = ["<h2 id='corruptions'>Under corruption</h2>"]
    name, main = records[0]
    parts.append(_summary(name, main))
    parts.append(figure)
    parts.append(_severity_table(main))
    if len(records) > 1:
        parts.append("<h3>By model file</h3>")
        parts.append(_files_table(records))
    return "".join(parts)


def _summary(name: str, e: CorruptionEvaluation) -> str:
    r = e.record
    calibrated = " (calibrated by its temperature)" if r.get("temperature") else ""
    return (
        f"<p>{_e(name)} on {_e(r.get('images'))} of the {_e(r.get('test_images'))} test images "
        f"(seed {_e(e.seed)}, the {_e(e.table)} severity table), each corruption at each "
        f"severity: mean top-1 <b>{_pct(e.mean_top1)}</b> against {_pct(e.clean_top1)} clean "
        f"({_pct(e.relative_top1, '{:.1%}')} of it); ECE{_e(calibrated)} "
        f"{_num(e.clean_ece)} clean, {_num(e.mean_ece)} corrupted.</p>"
    )


def _severity_table(e: CorruptionEvaluation) -> str:
    """Top-1 per corruption (rows) and severity (columns), with the means."""
    severities = e.severities()
    head = "<tr><th>corruption</th><th>family</th>"
    head += "".join(f"<th>{s}</th>" for s in severities) + "<th>mean</th></tr>"
    means = e.corruption_means()
    rows = []
    for name in e.corruptions():
        cells = "".join(f"<td>{_pct(e.cell(name, s)['top1'])}</td>" for s in severities)
        rows.append(f"<tr><td>{_e(name)}</td><td>{_e(e.family(name))}</td>{cells}"
                    f"<td><b>{_pct(means[name])}</b></td></tr>")  # fmt: skip
    per_severity = e.severity_means()
    cells = "".join(f"<td>{_pct(per_severity[s])}</td>" for s in severities)
    rows.append(f"<tr><th>mean</th><th></th>{cells}<th>{_pct(e.mean_top1)}</th></tr>")
    return f"<table id='corruption-top1'>{head}{''.join(rows)}</table>"


def _files_table(records: list[tuple[str, CorruptionEvaluation]]) -> str:
    """Mean top-1 per corruption of each evaluated model (columns), with int8 - fp32 where
    both X.onnx and X.int8.onnx were evaluated."""
    names = list(dict.fromkeys(n for _, e in records for n in e.corruptions()))
    pair = _int8_pair(records)
    head = "<tr><th>corruption</th>" + "".join(
        f"<th>{_e(name)} ({_e(e.runtime)})</th>" for name, e in records
    )
    head += "<th>int8 &minus; fp32</th>" if pair else ""
    rows = [_files_row("clean", [e.clean_top1 for _, e in records], pair, records)]
    for n in names:
        values = [e.corruption_means().get(n) for _, e in records]
        rows.append(_files_row(n, values, pair, records))
    rows.append(_files_row("mean", [e.mean_top1 for _, e in records], pair, records))
    subsets = {(e.images, e.seed, e.table) for _, e in records}
    note = (
        "<p class='note'>These were evaluated on different images (count, seed or table): "
        "their differences are not the model's alone.</p>"
        if len(subsets) > 1
        else ""
    )
    return f"<table id='corruption-files'>{head}</tr>{''.join(rows)}</table>{note}"


def _files_row(label, values, pair, records) -> str:
    cells = "".join(f"<td>{_pct(v)}</td>" for v in values)
    if pair:
        names = [name for name, _ in records]
        fp32, int8 = (values[names.index(p)] for p in pair)
        delta = (int8 - fp32) * 100 if fp32 is not None and int8 is not None else None
        cells += f"<td>{_num(delta, '{:+.2f} points')}</td>"
    return f"<tr><td>{_e(label)}</td>{cells}</tr>"


def _int8_pair(records: list[tuple[str, CorruptionEvaluation]]) -> tuple[str, str] | None:
    """(X.onnx, X.int8.onnx) where both are among the records' names."""
    names = [name for name, _ in records]
    for name in names:
        if name.endswith(".int8.onnx") and name.replace(".int8.onnx", ".onnx") in names:
            return name.replace(".int8.onnx", ".onnx"), name
    return None


def _pct(value, spec: str = "{:.2%}") -> str:
    return _num(value, spec)


def _num(value, spec: str = "{:.4f}") -> str:
    return "" if value is None else _e(spec.format(value))


def _e(text) -> str:
    return html.escape(visible(str(text)), quote=True)
