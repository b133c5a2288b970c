"""`cifar100 evaluate --corruptions`: accuracy under the common corruptions, on the session's
tiny trained run (32 test images): the record it writes, that the images it scores are the
corruptions module's, the one-line refusals, and what report and compare show of it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cifar100 import cli
from cifar100.calibration import scores
from cifar100.compare import compare_runs, format_comparison
from cifar100.corruptions import CORRUPTIONS, corrupt
from cifar100.errors import CheckpointError
from cifar100.evaluate import model_data
from cifar100.report import build_report
from cifar100.robustness import (
    corruption_names,
    evaluate_corruptions,
    severity_list,
    stratified_subset,
)
from cifar100.runtime.corruption_evaluation import CorruptionEvaluation
from cifar100.runtime.trained_model import load

PICK = ["--corruptions", "fog,gaussian_noise", "--severities", "1,5", "--corruption-images", "12"]


@pytest.fixture(scope="module")
def run(tiny_run_copy):
    return tiny_run_copy


def _cache(run) -> str:
    return str(run.parent / "cache")  # tiny_run_copy's root: run/, cache/, the archive


def _evaluate(target, capsys, *extra: str) -> int:
    argv = ["evaluate", str(target), "--no-progress", "--cache-dir", _cache_of(target), *extra]
    return cli.main(argv)


def _cache_of(target) -> str:
    return _cache(target if target.is_dir() else target.parent)


@pytest.fixture(scope="module")
def written(run):
    """evaluate RUN --corruptions on 2 corruptions x 2 severities x 12 images, via the CLI."""
    assert cli.main(["evaluate", str(run), *PICK, "--no-progress", "--cache-dir", _cache(run)]) == 0
    return json.loads((run / "evaluation-corruptions.json").read_text())


def test_the_record_holds_every_cell_and_its_means(written, run):
    r = written
    assert r["images"] == 12 and r["test_images"] == 32 and r["seed"] == 0
    assert r["table"] == "cifar" and r["runtime"] == "torch" and r["checkpoint"].endswith("best.pt")
    assert list(r["corruptions"]) == ["gaussian_noise", "fog"]  # by family, as CORRUPTIONS
    assert r["families"].keys() == {"noise", "weather"}
    for name, entry in r["corruptions"].items():
        assert entry["family"] == {"gaussian_noise": "noise", "fog": "weather"}[name]
        assert list(entry["severities"]) == ["1", "5"]
        cells = entry["severities"].values()
        assert all(0 <= c["top1"] <= 1 and 0 <= c["ece"] <= 1 for c in cells)
        assert entry["mean_top1"] == pytest.approx(np.mean([c["top1"] for c in cells]))
        assert r["families"][entry["family"]]["mean_top1"] == entry["mean_top1"]  # one each
    every = [c["top1"] for e in r["corruptions"].values() for c in e["severities"].values()]
    assert r["mean_top1"] == pytest.approx(np.mean(every))
    assert 0 <= r["clean"]["top1"] <= 1 and 0 <= r["clean"]["ece"] <= 1
    if r["clean"]["top1"]:
        assert r["relative_top1"] == pytest.approx(r["mean_top1"] / r["clean"]["top1"])
    # The top-1 images are all 12, a twelfth apart.
    assert all(round(c * 12, 6).is_integer() for c in every)


def test_the_same_images_give_the_same_record_again(written, run):
    again = evaluate_corruptions(run, "gaussian_noise,fog", [5, 1], images=12,
                                 cache_dir=_cache(run), progress=False)  # fmt: skip
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert strip(again.to_json()) == strip(written)


def test_a_cell_is_the_model_on_the_corruptions_modules_images(written, run):
    model = load(run, device="cpu")
    test = model_data(model, cache_dir=_cache(run), progress=False).test
    index = stratified_subset(test.labels, 12, seed=0)
    picked = torch.from_numpy(index)
    foggy = corrupt(test.images[picked], "fog", 5, seed=0, table="cifar", indices=index)
    # Each image's corruption is seeded by its index in the whole split: the same when the
    # whole split is corrupted and the subset read from it.
    assert torch.equal(foggy, corrupt(test.images, "fog", 5, seed=0)[picked])
    logits = model.logits(foggy)
    labels = test.labels[picked]
    cell = written["corruptions"]["fog"]["severities"]["5"]
    assert cell["top1"] == float((logits.argmax(1) == labels).double().mean())
    temperature = model.info.temperature
    assert written["temperature"] == temperature
    assert cell["ece"] == pytest.approx(scores(logits, labels, temperature or 1.0)["ece"])
    clean = model.logits(test.images[picked])
    assert written["clean"]["top1"] == float((clean.argmax(1) == labels).double().mean())


def test_the_subset_is_stratified_by_class_and_seeded():
    labels = np.repeat(np.arange(10), [50] * 5 + [150] * 5)  # 1000 images, two class sizes
    index = stratified_subset(labels, 100, seed=3)
    assert len(index) == len(set(index)) == 100 and np.all(np.diff(index) > 0)
    assert np.bincount(labels[index]).tolist() == [5] * 5 + [15] * 5
    assert np.array_equal(index, stratified_subset(labels, 100, seed=3))
    assert not np.array_equal(index, stratified_subset(labels, 100, seed=4))
    # Remainders: 7 images of 3 equal classes -> 3, 2, 2; all of them when asked for more
    assert np.bincount(np.arange(9)[stratified_subset(np.arange(9) // 3, 7)] // 3).tolist() == [
        3, 2, 2,
    ]  # fmt: skip
    assert stratified_subset(labels, 5000).tolist() == list(range(1000))


def test_names_families_and_severities():
    assert corruption_names(None) == corruption_names("all") == list(CORRUPTIONS)
    assert corruption_names("fog, noise") == [
        "gaussian_noise", "shot_noise", "impulse_noise", "fog",
    ]  # fmt: skip
    assert corruption_names(["digital", "contrast"]) == [
        "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    ]  # fmt: skip
    assert severity_list("5,1,1") == [1, 5] and severity_list(None) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--corruptions", "fog,smoke"], ["'smoke'", "weather", "gaussian_noise", "fog"]),
        (["--corruptions", "--severities", "0,2"], ["'0'", "1, 2, 3, 4, 5"]),
        (["--severities", "1"], ["--corruptions"]),
        (["--corruptions", "--tta", "flip"], ["--tta flip"]),
    ],
)
def test_a_wrong_choice_is_one_line_and_writes_nothing(run, capsys, argv, words, tmp_path):
    out = tmp_path / "out.json"
    argv = ["evaluate", str(run), *argv, "--output", str(out), "--cache-dir", _cache(run)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and all(w in err for w in words), err
    assert not out.exists()


def test_a_run_whose_data_is_gone_is_one_line(run, capsys, tmp_path):
    argv = ["evaluate", str(run), "--corruptions", "fog", "--data", str(tmp_path / "gone")]
    assert cli.main([*argv, "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "gone" in err


def test_the_printed_table_has_a_row_per_corruption_and_the_means(written, run):
    lines = CorruptionEvaluation.read(run / "evaluation-corruptions.json").format().splitlines()
    header = lines[1].split()
    assert header == ["top-1", "1", "5", "mean"]
    assert [line.split()[0] for line in lines[2:5]] == ["gaussian_noise", "fog", "mean"]
    assert lines[-1].startswith("clean top-1") and "of clean" in lines[-1]


def test_report_and_compare_show_it(written, run):
    page = build_report(run, plots=False).read_text()
    section = page.split("id='corruptions'", 1)[1].split("<h2", 1)[0]
    assert "id='corruption-top1'" in section and "gaussian_noise" in section
    assert f"{written['corruptions']['fog']['mean_top1']:.2%}" in section
    assert "Other evaluations" not in page  # not mistaken for a variant of evaluation.json
    header, row = format_comparison(compare_runs([run])).splitlines()
    col = header.index("corrupted top-1")
    assert row[col : col + len("corrupted top-1")].strip() == f"{written['mean_top1']:.2%}"


def test_the_plot_has_a_panel_per_family_and_the_clean_line(written, run, tmp_path):
    from cifar100.plots import plot_corruptions, plot_run

    fig = plot_corruptions(CorruptionEvaluation.read(run / "evaluation-corruptions.json"))
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["noise", "weather"]
    for ax in axes:
        labels = [line.get_label() for line in ax.get_lines()]
        assert labels[-1] == "clean" and ax.get_lines()[-1].get_linestyle() == "--"
    # plot_run draws it from the record alone (a directory with nothing else to plot: fast)
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("config.json", "evaluation-corruptions.json"):
        (alone / name).write_bytes((run / name).read_bytes())
    assert list(plot_run(alone)) == ["corruptions"]


@pytest.mark.slow
def test_an_onnx_export_and_its_int8_are_evaluated_under_corruption(written, run, capsys):
    for extra in ([], ["--quantize", "int8"]):
        argv = ["export", str(run), "--format", "onnx", *extra, "--cache-dir", _cache(run)]
        assert cli.main([*argv, "--force", "--no-progress"]) == 0
    capsys.readouterr()
    records = {}
    for name in ("model.onnx", "model.int8.onnx"):
        assert _evaluate(run / name, capsys, *PICK, "--json") == 0
        records[name] = json.loads(capsys.readouterr().out)
        written_file = json.loads((run / f"{name}.eval-corruptions.json").read_text())
        assert written_file == records[name] and written_file["runtime"] == "onnx"
        assert written_file["checkpoint"] == str(run / name)
    # fp32 ONNX: the checkpoint's predictions up to float rounding
    assert records["model.onnx"]["clean"]["top1"] == pytest.approx(
        written["clean"]["top1"], abs=0.1
    )
    page = build_report(run, plots=False).read_text()
    table = page.split("id='corruption-files'", 1)[1].split("</table>", 1)[0]
    assert (
        table.index("best.pt (torch)")
        < table.index("model.onnx (onnx)")
        < table.index("model.int8.onnx (onnx)")
    )
    assert "int8 &minus; fp32" in table and "points" in table
    assert "eval-corruptions" not in page.split("Other evaluations")[-1].split("<h2")[0]


@pytest.mark.parametrize("content", ["[1]", "{not json", '{"mean_top1": "68%"}'])
def test_a_damaged_record_is_one_line_and_left_out_of_pages(tmp_path, content):
    path = tmp_path / "evaluation-corruptions.json"
    path.write_text(content)
    with pytest.raises(CheckpointError, match=str(path)) as caught:
        CorruptionEvaluation.read(path)
    assert "\n" not in str(caught.value) and "corruption" in str(caught.value)
    assert CorruptionEvaluation.read_if_usable(path) is None
