"""Evaluation metrics (F1, calibration), flip TTA, EMA weights, predictions.npz and `compare`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from cifar100 import cli
from cifar100.data.tensors import ImageSet
from cifar100.evaluate import save_predictions
from cifar100.metrics import classification_metrics, top5_applies
from cifar100.runtime.inference import predict_logits
from synthetic_cifar import make_cifar100_archive
from synthetic_folders import class_image, write_split_folder

TINY = ["--preset", "scratch", "--epochs", "1", "--no-progress",
        "--set", "train.batch_size=32", "--set", "train.eval_batch_size=64",
        "--set", "data.val_fraction=0.2"]  # fmt: skip


def test_f1_and_calibration_match_a_hand_computed_case():
    # Predictions 0, 1, 1, 1 for labels 0, 0, 1, 2; confidences 0.9, 0.62, 0.64, 0.5.
    probs = torch.tensor(
        [[0.9, 0.05, 0.05], [0.28, 0.62, 0.1], [0.26, 0.64, 0.1], [0.1, 0.5, 0.4]],
        dtype=torch.float64,
    )
    labels = torch.tensor([0, 0, 1, 2])
    m = classification_metrics(probs.log().float(), labels, ["a", "b", "c"])
    # a: P 1/1, R 1/2, F1 2/3; b: P 1/3, R 1/1, F1 1/2; c: never predicted, F1 0.
    assert m["per_class_prf"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert m["per_class_prf"]["b"]["precision"] == pytest.approx(0.3333)
    assert m["per_class_prf"]["b"]["f1"] == 0.5 and m["per_class_prf"]["c"]["f1"] == 0.0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3, abs=1e-6)
    # Bins of width 1/15: 0.9 -> bin 13 (right), 0.62 and 0.64 -> bin 9 (one right, mean 0.63),
    # 0.5 -> bin 7 (wrong). ECE = (0.1 + 2 * |0.5 - 0.63| + 0.5) / 4.
    cal = m["calibration"]
    assert cal["ece"] == pytest.approx((0.1 + 2 * 0.13 + 0.5) / 4, abs=1e-5)
    assert len(cal["bins"]) == 15 and sum(b["count"] for b in cal["bins"]) == 4
    nine = cal["bins"][9]
    assert nine["count"] == 2 and nine["accuracy"] == 0.5
    assert nine["confidence"] == pytest.approx(0.63, abs=1e-5)
    assert cal["bins"][0]["count"] == 0 and cal["bins"][0]["accuracy"] is None


def test_perfect_confident_predictions_have_f1_one_and_no_calibration_error():
    labels = torch.tensor([0, 1, 2, 1])
    logits = torch.nn.functional.one_hot(labels, 3).float() * 100
    m = classification_metrics(logits, labels, ["a", "b", "c"])
    assert m["macro_f1"] == 1.0 and m["calibration"]["ece"] == pytest.approx(0.0, abs=1e-9)


def test_top5_only_with_more_than_five_classes():
    from cifar100.engine.head_training import evaluate_head

    for n, shown in ((3, False), (5, False), (6, True), (100, True)):
        logits = torch.randn(12, n, generator=torch.Generator().manual_seed(n))
        labels = torch.arange(12) % n
        m = classification_metrics(logits, labels, [str(i) for i in range(n)])
        assert ("top5" in m) is shown and top5_applies(n) is shown
        head = nn.Linear(4, n)  # features mode's validation: the same rule
        assert ("top5" in evaluate_head(head, torch.randn(12, 4), labels)) is shown
    assert m["top5"] >= m["top1"]


def _images(n: int = 6) -> torch.Tensor:
    return torch.randint(0, 256, (n, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator())


def test_flip_tta_changes_nothing_for_a_mirror_invariant_model():
    torch.manual_seed(0)
    # Global average pooling first: a mirror image gives exactly the same output.
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 5))
    images = _images()
    plain = predict_logits(model, images, torch.device("cpu"), amp=False)
    tta = predict_logits(model, images, torch.device("cpu"), amp=False, tta_flip=True)
    torch.testing.assert_close(tta.softmax(1), plain.softmax(1), atol=1e-6, rtol=1e-5)


def test_flip_tta_averages_the_mirror_images_softmax():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))  # position-dependent
    images = _images()
    cpu = torch.device("cpu")
    plain = predict_logits(model, images, cpu, amp=False)
    mirror = predict_logits(model, images.flip(2), cpu, amp=False)
    tta = predict_logits(model, images, cpu, amp=False, tta_flip=True)
    assert not torch.allclose(tta.softmax(1), plain.softmax(1), atol=1e-4)
    expected = (plain.softmax(1) + mirror.softmax(1)) / 2
    torch.testing.assert_close(tta.softmax(1), expected, atol=1e-6, rtol=1e-5)


def test_predictions_npz_round_trips(tmp_path):
    data = ImageSet(
        images=_images(4),
        labels=torch.tensor([0, 1, 1, 0]),
        classes=["apple", "bee"],
        coarse_labels=torch.tensor([0, 0, 0, 0]),
        coarse_classes=["things"],
    )
    logits = torch.randn(4, 2)
    save_predictions(tmp_path / "p.npz", logits, data, [0, 0], ["things"])
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]  # no temporary file left
    with np.load(tmp_path / "p.npz") as z:
        assert z["labels"].dtype == np.int64 and z["labels"].tolist() == [0, 1, 1, 0]
        assert z["logits"].dtype == np.float32 and np.allclose(z["logits"], logits.numpy())
        assert z["classes"].tolist() == ["apple", "bee"]
        assert z["coarse_classes"].tolist() == ["things"] and z["fine_to_coarse"].tolist() == [0, 0]
        assert z["image_index"].tolist() == [0, 1, 2, 3]  # fewer than a grid: every image
        assert z["images"].dtype == np.uint8 and np.array_equal(z["images"], data.images.numpy())


def test_predictions_npz_holds_only_the_images_the_grids_show(tmp_path):
    from cifar100.plots import _test_images
    from cifar100.plots.explanations import pick_explained
    from cifar100.plots.predictions import example_indices

    n = 500
    data = ImageSet(images=_images(n), labels=torch.arange(n) % 10, classes=list("abcdefghij"))
    logits = torch.randn(n, 10)
    save_predictions(tmp_path / "p.npz", logits, data)
    with np.load(tmp_path / "p.npz") as z:
        arrays = {k: z[k] for k in z.files}
    # the example grids' 36 + 36, and the report's explained ones: 8 mistakes, 2 per class
    assert len(arrays["images"]) == len(arrays["image_index"]) <= 72 + 8 + 20
    labels, preds = data.labels.numpy(), logits.argmax(1).numpy()
    full = _test_images(arrays)
    assert full.shape == tuple(data.images.shape)
    for wrong in (False, True):
        shown = example_indices(labels, preds, only_wrong=wrong)
        assert len(shown) == 36 and np.array_equal(full[shown], data.images.numpy()[shown])
    mistakes, right = pick_explained(labels, logits.softmax(1).numpy(), np.arange(n))
    confidence, wrong = logits.softmax(1).max(1).values.numpy(), np.flatnonzero(preds != labels)
    assert set(mistakes) == set(wrong[np.argsort(-confidence[wrong])][:8])  # of all 500
    assert np.array_equal(full[mistakes], data.images.numpy()[mistakes]) and len(right) == 20


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two one-epoch runs on a tiny synthetic CIFAR-100: one keeps an EMA, one does not."""
    root = tmp_path_factory.mktemp("eval")
    archive = make_cifar100_archive(root / "c100.tar.gz", n_train=64, n_test=40)
    cache = root / "cache"
    for name, extra in (("ema", ["--set", "train.ema_decay=0.9"]), ("plain", [])):
        argv = ["train", *TINY, "--data", str(archive), "--cache-dir", str(cache)]
        assert cli.main([*argv, "--out", str(root / name), *extra]) == 0
    # What training recorded, before `evaluate` rewrites evaluation.json.
    trained = json.loads((root / "ema" / "evaluation.json").read_text())
    return root / "ema", root / "plain", cache, trained


def _evaluate(run, cache, *flags, capsys) -> dict:
    argv = ["evaluate", str(run), "--json", "--no-progress", "--cache-dir", str(cache), *flags]
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_evaluate_writes_predictions_and_new_metrics(runs, capsys):
    run, _, cache, _ = runs
    result = _evaluate(run, cache, capsys=capsys)
    assert result["tta"] == "none" and "weights" not in result
    assert 0.0 <= result["macro_f1"] <= 1.0 and 0.0 <= result["calibration"]["ece"] <= 1.0
    assert result["predictions"] == str(run / "predictions.npz")
    with np.load(run / "predictions.npz") as z:
        assert z["logits"].shape == (40, 100) and z["images"].shape[1:] == (32, 32, 3)
        assert len(z["images"]) == len(z["image_index"]) <= 40
        assert len(z["classes"]) == 100 and len(z["fine_to_coarse"]) == 100
        top1 = float((z["logits"].argmax(1) == z["labels"]).mean())
    assert top1 == pytest.approx(result["top1"])
    assert cli.main(["evaluate", str(run), "--no-progress", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "macro-F1" in out and "ECE" in out and "top-5" in out  # 100 classes


@pytest.mark.slow
def test_tta_and_ema_flags(runs, capsys):
    run, _, cache, trained = runs
    plain = _evaluate(run, cache, capsys=capsys)
    record = (run / "evaluation.json").read_bytes()
    plain_logits = np.load(run / "predictions.npz")["logits"]
    ema = _evaluate(run, cache, "--ema", capsys=capsys)
    ema_logits = np.load(run / "predictions-ema.npz")["logits"]
    assert ema["weights"] == "ema" and ema["ema_updates"] > 0
    assert ema["predictions"] == str(run / "predictions-ema.npz")
    assert not np.allclose(ema_logits, plain_logits)  # other weights, other outputs
    # Training's own test evaluation of its EMA agrees with --ema and with the plain
    # evaluation's EMA summary.
    for result in (ema, plain["ema"]):
        assert result["top1"] == pytest.approx(trained["ema"]["top1"])
        assert result["loss"] == pytest.approx(trained["ema"]["loss"], rel=1e-4)
    tta = _evaluate(run, cache, "--tta", "flip", capsys=capsys)
    assert tta["tta"] == "flip" and tta["images"] == plain["images"] and "ema" not in tta
    assert tta["loss"] != pytest.approx(plain["loss"])
    # The run tested best.pt (train.final=best): last.pt is the variant, named so.
    assert plain["checkpoint"] == str(run / "best.pt")
    last = _evaluate(run, cache, "--checkpoint", "last", "--ema", "--tta", "flip", capsys=capsys)
    assert last["checkpoint"] == str(run / "last.pt")
    # Each variant has its own files; the run's record (read by report, compare) is untouched.
    for name in ("ema", "tta", "last-ema-tta"):
        assert json.loads((run / f"evaluation-{name}.json").read_text())["images"] == 40
        with np.load(run / f"predictions-{name}.npz") as z:  # logits, not the images again
            assert z["logits"].shape == (40, 100) and "images" not in z.files
    assert (run / "evaluation.json").read_bytes() == record
    assert np.array_equal(np.load(run / "predictions.npz")["logits"], plain_logits)


def test_ema_on_a_run_without_one_is_one_clear_line(runs, capsys):
    _, run, cache, _ = runs
    argv = ["evaluate", str(run), "--ema", "--no-progress", "--cache-dir", str(cache)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "no EMA weights" in err and "\n" not in err


def test_compare_lists_runs_and_rejects_other_directories(runs, tmp_path, capsys):
    ema, plain, _, _ = runs
    assert cli.main(["compare", str(ema), str(plain)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("run")
    assert lines[1].startswith("ema ") and lines[2].startswith("plain ")
    assert "scratch" in lines[1] and "resnet50v2" in lines[1] and "1/1" in lines[1]
    assert cli.main(["compare", str(ema), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["epochs_done"] == row["epochs"] == 1 and row["device"] == "cpu"
    assert row["wall_s"] > 0 and row["test_top1"] is not None and row["test_top5"] is not None
    rates = row["train_images_per_s"]  # weights=none: no frozen phase, fine-tuning's rate alone
    assert list(rates) == ["finetune"] and rates["finetune"] > 0
    # Another directory among them: the runs are compared, it is named in one line, exit 1.
    assert cli.main(["compare", str(ema), str(tmp_path)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert str(tmp_path) in err and "not a cifar100 run" in err and "\n" not in err
    assert captured.out.splitlines()[1].startswith("ema ")
    assert cli.main(["compare", str(tmp_path)]) == 2  # none could be read


def test_compare_gives_no_image_rate_for_a_features_run(tmp_path):
    # Its epochs train the head on cached features (tens of thousands a second), which would
    # read as a backbone's images/s beside fine-tuning runs.
    from cifar100.compare import summarize_run
    from cifar100.config import load_preset

    (tmp_path / "config.json").write_text(json.dumps(load_preset("cpu").to_dict()))
    record = {"epoch": 1, "images_per_s": 35000.0, "val_top1": 0.7, "wall_s": 200.0}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    row = summarize_run(tmp_path)
    assert row["mode"] == "features" and row["train_images_per_s"] is None
    assert row["best_val_top1"] == 0.7 and row["wall_s"] == 200.0


def test_compare_gives_each_phases_images_over_seconds_not_a_mean_of_rates(tmp_path):
    from cifar100.compare import format_comparison, summarize_run
    from cifar100.config import load_preset

    (tmp_path / "config.json").write_text(json.dumps(load_preset("seed").to_dict()))
    images = 1000  # every epoch trains as many; epoch_s holds validation too
    rates = [("frozen", 400.0), ("frozen", 400.0), ("finetune", 100.0), ("finetune", 25.0),
             ("finetune", 25.0)]  # fmt: skip
    records = [{"epoch": i + 1, "phase": phase, "images_per_s": rate, "val_top1": 0.5,
                "epoch_s": images / rate + 3.0}
               for i, (phase, rate) in enumerate(rates)]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    row = summarize_run(tmp_path)
    # Fine-tuning: 3000 images in 10 + 40 + 40 s of steps, 33 a second; the mean of its rates
    # says 50, and the mean of all five (the old figure) 190.
    assert row["train_images_per_s"] == pytest.approx({"frozen": 400.0, "finetune": 3000 / 90})
    header, line = format_comparison([row]).splitlines()
    col, width = header.index("img/s (finetune)"), len("img/s (finetune)")
    assert line[col : col + width].strip() == "33"


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """A one-epoch run (with an EMA) on a 3-class image folder, where top-5 is always 100%."""
    root = tmp_path_factory.mktemp("few")
    data = write_split_folder(root / "data", dict.fromkeys("abc", 12), dict.fromkeys("abc", 4))
    cache = root / "cache"
    argv = ["train", *TINY, "--dataset", "folder", "--data", str(data), "--cache-dir", str(cache),
            "--set", "train.ema_decay=0.9", "--set", "model.backbone=efficientnet_lite0",
            "--out", str(root / "run")]  # fmt: skip
    assert cli.main(argv) == 0
    return root / "run", cache


@pytest.mark.slow
def test_no_top5_with_five_classes_or_fewer(three_classes, runs, tmp_path, capsys):
    from cifar100.compare import compare_runs, format_comparison
    from cifar100.report import build_report
    from cifar100.runtime.run_dir import read_metrics

    run, cache = three_classes
    hundred = runs[0]
    trained = json.loads((run / "evaluation.json").read_text())
    assert "top5" not in trained and "top5" not in trained["ema"] and "top1" in trained
    assert all("val_top5" not in r and "val_top1" in r for r in read_metrics(run / "metrics.jsonl"))
    capsys.readouterr()
    result = _evaluate(run, cache, capsys=capsys)
    assert "top5" not in result and "top5" not in result["ema"]
    assert cli.main(["evaluate", str(run), "--no-progress", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" not in out
    # compare: a blank cell beside the 100-class run's top-5
    header, few, many = format_comparison(compare_runs([run, hundred])).splitlines()
    col, width = header.index("test top-5"), len("test top-5")
    assert few[col : col + width].strip() == "" and many[col : col + width].strip().endswith("%")
    page = build_report(run, plots=False).read_text()
    assert "top-1" in page and "top-5" not in page and "val_top5" not in page
    page = build_report(hundred, plots=False).read_text()
    assert "top-5" in page and "val_top5" in page
    # predict's default 5 (and -k 5) on 3 classes: the 3 there are
    class_image(0, 0, 32).save(tmp_path / "a.png")
    for k in ([], ["-k", "5"]):
        assert cli.main(["predict", str(run), str(tmp_path / "a.png"), *k, "--json"]) == 0
        (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        assert sorted(p["class"] for p in line["predictions"]) == ["a", "b", "c"]


# --- each model file's own results (issue 19: items 2 and 3) ------------------------------------


def _evaluate_file(target, capsys) -> dict:
    cache = target.parent.parent / "cache"  # tiny_run_copy's root: run/, cache/, the archive
    argv = ["evaluate", str(target), "--json", "--no-progress", "--cache-dir", str(cache)]
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _export(run, fmt: str, out, capsys) -> None:
    assert cli.main(["export", str(run), "--format", fmt, "--out", str(out), "--force"]) == 0
    capsys.readouterr()


@pytest.mark.slow
def test_each_evaluated_model_file_keeps_its_own_results_and_the_report_lists_them(
    tiny_run_copy, capsys
):
    import shutil

    run = tiny_run_copy
    _export(run, "safetensors", run / "model.safetensors", capsys)
    shutil.copy(run / "last.pt", run / "model.pt")  # another model file named model.*
    results = {
        name: _evaluate_file(run / name, capsys) for name in ("model.safetensors", "model.pt")
    }
    for name, result in results.items():
        written = json.loads((run / f"{name}.eval.json").read_text())
        assert written == result and written["checkpoint"] == str(run / name)
        assert written["predictions"] == str(run / f"{name}.predictions.npz")
        assert (run / f"{name}.predictions.npz").is_file()
    assert not (run / "model.eval.json").exists()  # the name the two files shared
    assert cli.main(["report", str(run)]) == 0
    others = (run / "report.html").read_text().split("Other evaluations", 1)[-1]
    assert "model.safetensors" in others and "model.pt" in others
    for name in results:
        (run / f"{name}.eval.json").unlink()


@pytest.mark.slow
def test_a_model_files_accuracy_is_the_one_measured_on_that_file(tiny_run_copy, capsys):
    import cifar100

    run = tiny_run_copy
    target = run / "measured.safetensors"
    _export(run, "safetensors", target, capsys)
    assert cifar100.load(run, device="cpu").test_top1 is not None  # training measured last.pt
    exported = cifar100.load(target, device="cpu")  # never measured: not the checkpoint's figure
    assert exported.test_top1 is None and exported.info.test_top5 is None
    assert "test accuracy not measured" in repr(exported)
    result = _evaluate_file(target, capsys)
    again = cifar100.load(target, device="cpu")
    assert again.test_top1 == result["top1"] and f"test top-1 {result['top1']:.2%}" in repr(again)


@pytest.mark.slow
def test_an_evaluation_under_the_old_shared_name_counts_for_the_file_it_names(
    tiny_run_copy, capsys
):
    import cifar100
    from cifar100.runtime.evaluation import Evaluation

    run = tiny_run_copy
    target = run / "old.safetensors"
    _export(run, "safetensors", target, capsys)
    # Before each file kept its own: old.eval.json, shared by old.onnx and old.safetensors.
    shared = run / "old.eval.json"
    Evaluation.of(checkpoint=str(run / "old.onnx"), top1=0.25, images=32).write(shared)
    assert cifar100.load(target, device="cpu").test_top1 is None  # another file's
    Evaluation.of(checkpoint=str(target), top1=0.375, images=32).write(shared)
    assert cifar100.load(target, device="cpu").test_top1 == 0.375
    shared.unlink()
