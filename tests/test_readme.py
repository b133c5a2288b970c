"""The README's Python examples run, as written, against a real (tiny) trained run."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar100 import cli
from synthetic_cifar import make_cifar10_archive

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code(heading: str) -> list[str]:
    """The ```python blocks between `heading` and the next heading of its level."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{heading}\n")
    level = heading.split()[0]
    end = text.find(f"\n{level} ", start + len(heading) + 2)
    body = text[start : end if end > 0 else None]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


@pytest.fixture
def example_run(tmp_path, monkeypatch):
    """runs/example (a tiny trained run, exported to ONNX) and two photos, in a fresh folder."""
    archive = make_cifar10_archive(tmp_path / "c10.tar.gz", 64, 32)
    run = tmp_path / "runs" / "example"
    argv = ["train", "--preset", "scratch", "--dataset", "cifar10", "--data", str(archive),
            "--backbone", "efficientnet_lite0", "--set", "model.resize=1", "--epochs", "1",
            "--set", "train.batch_size=32", "--out", str(run), "--no-progress",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert cli.main(argv) == 0
    argv = ["export", str(run), "--format", "onnx", "--cache-dir", str(tmp_path / "cache")]
    assert cli.main(argv) == 0
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 90, 3), np.uint8)).save(tmp_path / "cat.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), np.uint8), "RGBA").save(tmp_path / "dog.png")
    monkeypatch.chdir(tmp_path)
    return run


@pytest.mark.slow
def test_the_use_a_trained_model_examples_run(example_run, capsys):
    blocks = section_code("## Use a trained model")
    assert len(blocks) >= 3  # load and predict, probabilities, ONNX Runtime on its own
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    printed = capsys.readouterr().out
    assert "TrainedModel(efficientnet_lite0, 10 classes, 32px" in printed


@pytest.mark.slow
def test_the_train_from_python_example_runs(tmp_path, monkeypatch, capsys):
    """cifar100.train, evaluate and export as README shows them, on a small CIFAR-10 archive
    (enough images for the scratch preset's batch of 128)."""
    make_cifar10_archive(tmp_path / "cifar-10-python.tar.gz", 300, 40)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 60, 3), np.uint8)).save(tmp_path / "cat.jpg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIFAR100_CACHE", str(tmp_path / "cache"))
    (code,) = section_code("## Train from Python")
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    printed = capsys.readouterr().out
    assert "TrainingRun(runs/notebook, 2 epochs, test top-1 " in printed
    run = namespace["run"]
    assert run.finished and not run.stopped_early and run.metrics.top1 is not None
    assert (tmp_path / "runs/notebook/evaluation-tta.json").is_file()
    assert (tmp_path / "runs/notebook/model.onnx").is_file()
