"""`cifar100 report`: one self-contained HTML page, checked in a real headless browser."""

from __future__ import annotations

import json
import shutil

import pytest

from cifar100 import cli
from synthetic_cifar import make_cifar100_archive

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    archive = make_cifar100_archive(root / "c100.tar.gz", n_train=160, n_test=60)
    run, cache = root / "run", root / "cache"
    args = ["--data", str(archive), "--cache-dir", str(cache), "--no-progress"]
    assert cli.main(["train", "--preset", "scratch", "--epochs", "2", "--out", str(run),
                     "--set", "train.batch_size=32", *args]) == 0  # fmt: skip
    assert cli.main(["evaluate", str(run), *args[2:]]) == 0
    return run


def test_report_is_one_self_contained_page(run_dir, capsys):
    assert cli.main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    assert "23,564,800" in page and "Total params" in page
    assert page.count("<figure") >= 4 and "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert json.loads((run_dir / "config.json").read_text())["preset"] in page


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


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium not installed (.ci/run installs Debian's chromium for this test)",
)
def test_report_renders_in_a_headless_browser(run_dir):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    assert cli.main(["report", str(run_dir)]) == 0
    errors = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((run_dir / "report.html").as_uri())
            shown = page.eval_on_selector_all(
                "figure img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)"
            )
            page.screenshot(path=str(run_dir / "report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert len(shown) >= 4 and all(shown)
