"""`cifar100 report`: one self-contained HTML page, checked in a real headless browser."""

from __future__ import annotations

import json
import shutil

import pytest

from cifar100 import cli
from headless_chromium import launch, needs_chromium
from synthetic_cifar import make_cifar100_archive


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    archive = make_cifar100_archive(root / "c100.tar.gz", n_train=160, n_test=60)
    run, cache = root / "run", root / "cache"
    args = ["--data", str(archive), "--cache-dir", str(cache), "--no-progress"]
    # Training alone, no `evaluate`: its final test keeps the predictions the page needs.
    assert cli.main(["train", "--preset", "scratch", "--epochs", "2", "--out", str(run),
                     "--set", "train.batch_size=32", "--set", "train.ema_decay=0.9",
                     *args]) == 0  # fmt: skip
    return run


@pytest.fixture(scope="module")
def report_page(run_dir, tmp_path_factory):
    """The run's report as written right after training, once for the tests that only read
    it (a copy: later tests write the run's own report again)."""
    assert cli.main(["report", str(run_dir)]) == 0
    page = tmp_path_factory.mktemp("page") / "report.html"
    shutil.copy(run_dir / "report.html", page)
    return page


@pytest.mark.slow
def test_report_is_one_self_contained_page(report_page, run_dir):
    page = report_page.read_text()
    assert "23,564,800" in page and "Total params" in page
    # Whole right after training: the confusion matrices and example images included.
    for figure in ("curves", "lr", "confusion", "superclass_confusion", "examples", "per_class"):
        assert f"id='{figure}'" in page, figure
    assert "class='note'" not in page  # nothing missing to explain
    # ResNet50V2 at 32 px without upsampling: one cell, no map to show, and the page says why.
    assert "id='explain'" in page and "single cell (1x1)" in page
    assert "id='explain_mistakes'" not in page
    assert "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert json.loads((run_dir / "config.json").read_text())["preset"] in page


@pytest.mark.slow
def test_the_report_shows_other_evaluations_beside_the_runs_own(run_dir, capsys):
    args = ["--cache-dir", str(run_dir.parent / "cache"), "--no-progress", "--json"]
    assert cli.main(["evaluate", str(run_dir), "--tta", "flip", *args]) == 0
    tta = json.loads(capsys.readouterr().out)
    assert cli.main(["evaluate", str(run_dir), "--ema", *args]) == 0
    assert cli.main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    assert "Other evaluations" in page
    assert "flip TTA" in page and "EMA weights" in page and f"{tta['top1']:.2%}" in page
    (run_dir / "evaluation-tta.json").unlink()
    (run_dir / "evaluation-ema.json").unlink()


@pytest.mark.slow
def test_a_report_says_why_figures_are_missing(tmp_path, run_dir):
    old = tmp_path / "old"  # a run from before training kept its predictions
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("*.pt", "plots", "report.html"))
    (old / "predictions.npz").unlink()
    assert cli.main(["report", str(old)]) == 0
    page = (old / "report.html").read_text()
    assert "id='confusion'" not in page
    assert f"<code>cifar100 evaluate {old}</code> writes it" in page


@pytest.mark.slow
def test_an_interrupted_run_is_reported_from_its_log(tmp_path, run_dir):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.json", "environment.json"):
        shutil.copy(run_dir / name, partial / name)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (partial / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][:20])  # cut mid-line
    assert cli.main(["report", str(partial)]) == 0
    page = (partial / "report.html").read_text()
    assert "1 of 2 epochs" in page and "id='curves'" in page


def test_not_a_run_is_one_line(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a cifar100 run directory" in err and "\n" not in err
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{tmp_path / 'nope'}: no such directory" in err and "\n" not in err


@pytest.mark.slow
@needs_chromium
def test_report_renders_in_a_headless_browser(report_page):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    errors = []
    with playwright.sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report_page.as_uri())
            shown = page.eval_on_selector_all(
                "figure img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)"
            )
            page.screenshot(path=str(report_page.with_suffix(".png")), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert len(shown) >= 4 and all(shown)


@pytest.mark.slow
@needs_chromium
def test_report_fits_a_phone_and_a_laptop(report_page):
    """At 390 px on a phone (which lays out a page without a viewport tag 980 px wide) and at
    1280 px the page itself never scrolls sideways: a wide table scrolls within itself."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    widths = {}
    with playwright.sync_playwright() as p:
        browser = launch(p)
        try:
            for width, phone in ((390, True), (1280, False)):
                context = browser.new_context(
                    viewport={"width": width, "height": 800}, is_mobile=phone, has_touch=phone
                )
                page = context.new_page()
                page.goto(report_page.as_uri())
                widths[width] = page.evaluate("document.documentElement.scrollWidth")
                context.close()
        finally:
            browser.close()
    assert widths == {390: 390, 1280: 1280}


@pytest.fixture
def looking_run(tiny_run_copy, monkeypatch):
    """The session's tiny run, its last feature map taken as 2x2: at 32 px it is 1x1 (no map
    to draw, the section says so: above), and a run that upsamples trains for a minute on two
    busy cores. The maps themselves are checked to be right in test_explain.py."""
    from cifar100.runtime import explain

    monkeypatch.setattr(explain, "feature_map_size", lambda model, size: (2, 2))
    return tiny_run_copy


@pytest.mark.slow
def test_the_report_shows_where_the_model_looked(looking_run):
    saved = (looking_run / "evaluation.json").read_text()
    evaluation = json.loads(saved)
    calibration = evaluation["calibration"]  # as evaluate will write it: before and after T
    after = {**calibration, "ece": 0.0123}
    calibration.update(nll=1.5, brier=0.8, temperature=1.7, calibrated=after | {"nll": 1.25})
    (looking_run / "evaluation.json").write_text(json.dumps(evaluation))
    assert cli.main(["report", str(looking_run)]) == 0
    page = (looking_run / "report.html").read_text()
    assert "id='explain'" in page and "2&times;2" in page and "class='note'" not in page
    shown = [f for f in ("explain_mistakes", "explain_correct") if f"id='{f}'" in page]
    assert shown and all((looking_run / "plots" / f"{f}.png").is_file() for f in shown)
    assert page.count("data:image/png;base64,") >= 6  # embedded: the page stands alone
    table = page[page.index("<table id='calibration'>") :].split("</table>")[0]
    assert "after temperature 1.700" in table and "0.0123" in table and "1.2500" in table
    assert "1.5000" in table and "Brier score" in table
    (looking_run / "evaluation.json").write_text(saved)


@pytest.mark.slow
def test_heatmaps_are_left_out_with_a_note_when_the_run_cannot_give_them(looking_run, tmp_path):
    from cifar100.predictions_file import read_predictions, write_predictions

    no_model = tmp_path / "no-model"
    shutil.copytree(looking_run, no_model, ignore=shutil.ignore_patterns("*.pt", "plots"))
    assert cli.main(["report", str(no_model)]) == 0
    page = (no_model / "report.html").read_text()
    assert "No heatmaps" in page and "no best.pt" in page and "id='confusion'" in page
    no_images = tmp_path / "no-images"
    shutil.copytree(looking_run, no_images, ignore=shutil.ignore_patterns("plots"))
    arrays = read_predictions(no_images / "predictions.npz")
    arrays = {k: v for k, v in arrays.items() if k not in ("images", "image_index")}
    write_predictions(no_images / "predictions.npz", arrays)
    assert cli.main(["report", str(no_images)]) == 0
    page = (no_images / "report.html").read_text()
    assert "No heatmaps: predictions.npz keeps no test images" in page
    assert "id='explain_mistakes'" not in page and "id='confusion'" in page
