"""Calibrated probabilities (a temperature fitted by NLL) and the "none of these" verdict (a
softmax-entropy threshold at a stated validation acceptance): fitted, kept with the model,
applied by TrainedModel, refitted by `evaluate` for checkpoints saved before they existed."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

import cifar100
from cifar100 import cli
from cifar100.calibration import fit_temperature, scores
from cifar100.errors import CheckpointError, DataError
from cifar100.runtime.checkpoint import Checkpoint, resolve_checkpoint
from cifar100.runtime.evaluation import Evaluation
from cifar100.runtime.ood_rule import OodRule
from cifar100.runtime.trust import entropy, fit_rule, score_logits


def _drawn(temperature: float, n: int = 20000, classes: int = 10, seed: int = 0):
    """Logits, and labels drawn from softmax(logits / temperature): a model whose logits are
    over-confident (temperature > 1) or under-confident (< 1) by exactly that factor."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 3
    labels = torch.multinomial((logits / temperature).softmax(1), 1, generator=g)[:, 0]
    return logits, labels


@pytest.mark.slow
@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_with(true_t):
    logits, labels = _drawn(true_t)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


def test_temperature_scaling_lowers_ece_and_nll_and_keeps_the_ranking():
    logits, labels = _drawn(2.0)
    t = fit_temperature(logits[:10000], labels[:10000])
    before, after = (
        scores(logits[10000:], labels[10000:]),
        scores(logits[10000:], labels[10000:], t),
    )
    assert after["ece"] < before["ece"] / 3 and after["nll"] < before["nll"]
    assert after["brier"] < before["brier"]
    calibrated = score_logits(logits, t).probabilities
    assert torch.equal(calibrated.argmax(1), logits.argmax(1))
    assert torch.allclose(calibrated.sum(1), torch.ones(len(logits)))
    assert sum(b["count"] for b in after["bins"]) == 10000


def test_the_rule_accepts_the_stated_share_of_validation_and_flags_uncertain_images():
    logits, _ = _drawn(1.0)
    rule = fit_rule(logits, acceptance=0.9)
    verdict = score_logits(logits, rule=rule).none_of_these
    assert verdict.double().mean().item() == pytest.approx(0.1, abs=0.005)
    # A uniform answer has the most entropy there is (log C): none of these; a sure one, none.
    sure_and_unsure = torch.tensor([[20.0] + [0.0] * 9, [0.0] * 10])
    assert entropy(sure_and_unsure)[1].item() == pytest.approx(math.log(10), rel=1e-5)
    assert score_logits(sure_and_unsure, rule=rule).none_of_these.tolist() == [False, True]
    assert not score_logits(sure_and_unsure).none_of_these.any()  # no rule: no verdict
    with pytest.raises(ValueError, match="acceptance"):
        fit_rule(logits, acceptance=0)


@pytest.mark.parametrize(
    "raw", [None, "x", {}, {"method": "energy", "threshold": 1}, {"method": "entropy"},
            {"method": "entropy", "threshold": "high"},
            {"method": "entropy", "threshold": float("nan")}],
)  # fmt: skip
def test_a_rule_this_version_cannot_apply_reads_as_none(raw):
    assert OodRule.from_json(raw) is None


@pytest.mark.slow
def test_a_trained_model_is_calibrated_and_gives_a_verdict(tiny_trained):
    model = cifar100.load(tiny_trained)
    assert model.temperature is not None and model.temperature > 0
    assert model.ood_rule is not None and model.ood_rule.acceptance == 0.95
    images = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8).numpy()
    logits = model.logits(images)
    expected = (logits / model.temperature).softmax(1).numpy()
    assert model.probabilities(images) == pytest.approx(expected, abs=1e-6)
    predictions = model.predict(images, k=2)
    for p, e, row in zip(predictions, expected, logits):
        assert p.top[0][1] == pytest.approx(float(e.max()), abs=1e-6)
        assert p.ood_score == pytest.approx(float(entropy(row[None])[0]), abs=1e-5)
        assert p.none_of_these == (p.ood_score > model.ood_rule.threshold)
        assert set(p.to_dict()) == {"path", "predictions", "ood_score", "none_of_these"}
    record = Evaluation.read(tiny_trained / "evaluation.json")
    assert record.calibration["temperature"] == model.temperature
    assert record.calibration["calibrated"]["ece"] >= 0 and record.ood["acceptance"] == 0.95


@pytest.mark.slow
def test_evaluate_fits_and_keeps_them_for_a_checkpoint_saved_before_they_existed(
    tiny_run_copy, capsys
):
    run = tiny_run_copy
    tested = resolve_checkpoint(run)  # what evaluate and load take from the run
    ckpt = Checkpoint.load(tested)
    ckpt.info.temperature = ckpt.info.ood = None  # as saved by an older version
    ckpt.save(tested)
    old = cifar100.load(run)
    assert old.temperature is None and old.ood_rule is None
    (prediction,) = old.predict(torch.zeros(1, 32, 32, 3, dtype=torch.uint8).numpy())
    assert prediction.ood_score is None and prediction.none_of_these is None  # unavailable
    assert prediction.to_dict()["ood_score"] is None

    cache = run.parent / "cache"
    assert cli.main(["evaluate", str(run), "--cache-dir", str(cache), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "fitted now on" in out and "calibrated (temperature" in out and "none of these" in out
    refitted = Checkpoint.load(tested).info
    assert refitted.temperature is not None and OodRule.from_json(refitted.ood) is not None
    assert Evaluation.read(run / "evaluation.json").record["fitted_now"]["saved_in"]
    # The same on every later evaluation: nothing is fitted twice.
    assert cli.main(["evaluate", str(run), "--cache-dir", str(cache), "--no-progress"]) == 0
    assert "fitted now" not in capsys.readouterr().out


def test_a_record_with_an_unusable_temperature_is_refused_in_one_line(tiny_trained, tmp_path):
    shutil.copy(tiny_trained / "last.pt", tmp_path / "m.pt")
    ckpt = Checkpoint.load(tmp_path / "m.pt")
    ckpt.info.temperature = -1.0
    ckpt.save(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"temperature -1.0 is not a positive number"):
        cifar100.load(tmp_path / "m.pt")


@pytest.mark.slow
def test_evaluate_fits_the_rule_again_at_another_acceptance(tiny_run_copy, capsys):
    run, cache = tiny_run_copy, tiny_run_copy.parent / "cache"
    argv = ["evaluate", str(run), "--cache-dir", str(cache), "--no-progress"]
    assert cli.main([*argv, "--ood-acceptance", "0.5"]) == 0
    assert "accepted 50% of validation" in capsys.readouterr().out
    fitted = Checkpoint.load(resolve_checkpoint(run)).info.ood  # the tested weights' checkpoint
    assert OodRule.from_json(fitted).acceptance == 0.5
    for bad in ("0", "1.5", "nan", "x"):
        with pytest.raises(SystemExit) as e:
            cli.main([*argv, "--ood-acceptance", bad])
        assert e.value.code == 2
    assert "share in (0, 1]" in capsys.readouterr().err
    with pytest.raises(DataError, match="without --ema, --tta or --data"):
        cifar100.evaluate(run, tta=True, ood_acceptance=0.9, cache_dir=cache, progress=False)


@pytest.mark.slow
def test_predict_json_gives_the_apis_calibrated_probabilities_and_verdicts(
    tiny_trained, tmp_path, capsys
):
    from PIL import Image

    rng = np.random.default_rng(1)
    paths = []
    for i in range(6):
        path = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(path)
        paths.append(str(path))
    assert cli.main(["predict", str(tiny_trained), *paths, "-k", "3", "--json"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # JSON lines
    expected = cifar100.load(tiny_trained).predict(paths, k=3)
    assert len(printed) == len(expected)
    for got, want in zip(printed, expected):
        assert [p["class"] for p in got["predictions"]] == [c for c, _ in want.top]
        assert [p["probability"] for p in got["predictions"]] == pytest.approx(
            [p for _, p in want.top], abs=1e-6
        )
        assert got["ood_score"] == pytest.approx(want.ood_score, abs=1e-6)
        assert got["none_of_these"] is want.none_of_these is not None


@pytest.mark.slow
def test_predict_says_plainly_when_an_image_is_none_of_the_classes(tiny_run_copy, capsys):
    from PIL import Image

    ckpt = Checkpoint.load(tiny_run_copy / "last.pt")
    ckpt.info.ood = OodRule(threshold=-1.0).to_json()  # every image is "none of these"
    ckpt.save(tiny_run_copy / "last.pt")
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tiny_run_copy.parent / "red.png")
    assert cli.main(["predict", str(tiny_run_copy), str(tiny_run_copy.parent / "red.png")]) == 0
    line = capsys.readouterr().out.strip()
    assert "red.png: none of the 10 classes (best guesses: " in line, line
