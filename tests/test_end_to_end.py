"""Train -> checkpoint -> resume -> evaluate -> predict through the CLI, on a tiny synthetic set."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from cifar100 import cli
from cifar100.config import apply_overrides, load_preset, preset_names
from cifar100.engine.train import train
from cifar100.runtime.checkpoint import (
    Checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from synthetic_cifar import make_cifar100_archive

FAST = ["--set", "train.batch_size=32", "--set", "train.eval_batch_size=64",
        "--set", "train.ema_decay=0.9"]  # fmt: skip


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_cifar100_archive(
        tmp_path_factory.mktemp("data") / "c100.tar.gz", n_train=160, n_test=60
    )


@pytest.fixture(scope="module")
def trained(archive, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run, cache = root / "run", root / "cache"
    rc = cli.main(
        [
            "train",
            "--preset",
            "scratch",
            "--data",
            str(archive),
            "--epochs",
            "2",
            "--out",
            str(run),
            "--cache-dir",
            str(cache),
            "--no-progress",
            *FAST,
        ]
    )
    assert rc == 0
    return run, cache


@pytest.mark.slow
def test_train_writes_a_self_explaining_run_directory(trained):
    run, _ = trained
    for name in (
        "config.json",
        "environment.json",
        "metrics.jsonl",
        "last.pt",
        "best.pt",
        "evaluation.json",
    ):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "scratch" and config["train"]["epochs"] == 2
    env = json.loads((run / "environment.json").read_text())
    assert env["device"] == "cpu" and env["torch"] == torch.__version__
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr"} <= set(records[0])
    assert "val_top1_ema" in records[0]
    # The run's whole time, set-up and evaluation included, grows from epoch to epoch.
    assert records[0]["epoch_s"] < records[0]["wall_s"] < records[1]["wall_s"]
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["train_wall_s"] > records[1]["wall_s"]
    assert 0.0 <= evaluation["ema"]["top1"] <= 1.0
    assert evaluation["images"] == 60 and 0.0 <= evaluation["top1"] <= evaluation["top5"] <= 1.0
    ckpt = Checkpoint.load(run / "last.pt")
    assert ckpt.epoch == 2 and len(ckpt.info.classes) == 100
    assert len(ckpt.info.coarse_classes) == 20 and len(ckpt.info.fine_to_coarse) == 100


@pytest.mark.slow
def test_resumed_run_ends_with_the_same_weights(archive, trained, tmp_path):
    run, cache = trained
    cfg = apply_overrides(
        load_preset("scratch"),
        [
            f"data.path={archive}",
            "train.epochs=2",
            "train.batch_size=32",
            "train.eval_batch_size=64",
            "train.ema_decay=0.9",
        ],
    )
    partial = tmp_path / "partial"
    result = train(cfg, out=partial, cache_dir=cache, progress=False, stop_after_epochs=1)
    assert result.epochs == 1 and not (partial / "evaluation.json").exists()
    assert (
        cli.main(["train", "--resume", str(partial), "--cache-dir", str(cache), "--no-progress"])
        == 0
    )
    a = load_checkpoint(run / "last.pt")["model"]
    b = load_checkpoint(partial / "last.pt")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ema_a = load_checkpoint(run / "last.pt")["ema"]
    ema_b = load_checkpoint(partial / "last.pt")["ema"]
    assert ema_a["updates"] == ema_b["updates"] > 0
    assert all(torch.equal(ema_a["model"][k], ema_b["model"][k]) for k in ema_a["model"])
    lines = (partial / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def _same_run(a_dir, b_dir):
    """Two run directories hold the same final weights, EMA and per-epoch training metrics."""
    a, b = load_checkpoint(a_dir / "last.pt"), load_checkpoint(b_dir / "last.pt")
    assert a["epoch"] == b["epoch"] and "position" not in b
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["ema"]["updates"] == b["ema"]["updates"]
    assert all(torch.equal(a["ema"]["model"][k], b["ema"]["model"][k]) for k in a["ema"]["model"])
    ra = [json.loads(line) for line in (a_dir / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(line) for line in (b_dir / "metrics.jsonl").read_text().splitlines()]
    keys = ("epoch", "train_loss", "train_top1", "val_loss", "val_top1", "lr")
    assert [[r[k] for k in keys] for r in ra] == [[r[k] for k in keys] for r in rb]


@pytest.mark.slow
def test_a_run_stopped_mid_epoch_resumes_exactly(archive, trained, tmp_path, capsys):
    run, cache = trained
    cfg = apply_overrides(
        load_preset("scratch"),
        [f"data.path={archive}", "train.epochs=2", *FAST[1::2]],
    )
    partial = tmp_path / "partial"
    # 110 training images in batches of 32: 3 steps an epoch, so step 5 is epoch 2's second.
    result = train(cfg, out=partial, cache_dir=cache, progress=False, stop_after_steps=5)
    assert result.stopped == "max_steps" and result.epochs == 1 and result.test == {}
    assert result.saved_at == "epoch 2, step 2 of 3"
    state = load_checkpoint(partial / "last.pt")
    assert state["epoch"] == 1 and state["position"]["step"] == 2
    stopped_wall = state["wall_s"]
    assert not (partial / "evaluation.json").exists()
    assert len((partial / "metrics.jsonl").read_text().splitlines()) == 1
    # Evaluating the stopped run's last.pt says what its weights are: 1 epoch and 2 steps (by
    # default evaluate takes best.pt, the best validated epoch's, as the run's test will).
    argv = ["evaluate", str(partial), "--cache-dir", str(cache), "--no-progress",
            "--checkpoint", "last", "--output", str(tmp_path / "mid.json")]  # fmt: skip
    assert cli.main(argv) == 0 and "(epoch 1 + 2 steps)" in capsys.readouterr().out
    # A copy as if stopped under 2-process DDP on a GPU (a CUDA generator's 16-byte state):
    # one CPU process resumes it from the same step, not bit for bit, and says so.
    other = tmp_path / "other"
    shutil.copytree(partial, other)
    state["position"]["rng"].append(state["position"]["rng"][0])
    state["position"]["generator"] = torch.zeros(16, dtype=torch.uint8)
    save_checkpoint(state, other / "last.pt")
    rc = cli.main(["train", "--resume", str(partial), "--cache-dir", str(cache), "--no-progress"])
    assert rc == 0
    _same_run(run, partial)
    # The resumed session's time adds to the first session's.
    assert json.loads((partial / "evaluation.json").read_text())["train_wall_s"] > stopped_wall
    capsys.readouterr()
    rc = cli.main(["train", "--resume", str(other), "--cache-dir", str(cache), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "stopped with 2 processes and resumed with 1" in out
    assert "resumed on another kind of device" in out
    assert load_checkpoint(other / "last.pt")["epoch"] == 2


@pytest.mark.slow
def test_sigterm_saves_the_position_and_resume_finishes_the_same_run(archive, trained, tmp_path):
    run, cache = trained
    stopped = tmp_path / "stopped"
    args = ["train", "--preset", "scratch", "--data", str(archive), "--epochs", "2",
            "--out", str(stopped), "--cache-dir", str(cache), "--no-progress", *FAST,
            "--set", "train.checkpoint_minutes=0.0001"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cifar100", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        # last.pt appears once the step loop (and its signal handler) runs.
        while not (stopped / "last.pt").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "training never wrote a checkpoint"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 143, err[-2000:]
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("stopped by SIGTERM: saved at ")
    assert f"cifar100 train --resume {stopped}" in last_line and "Traceback" not in err
    assert not (stopped / "evaluation.json").exists()
    rc = cli.main(["train", "--resume", str(stopped), "--cache-dir", str(cache), "--no-progress"])
    assert rc == 0
    _same_run(run, stopped)


@pytest.mark.slow
@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_trains(preset, archive, tmp_path, monkeypatch):
    # Each preset's whole recipe (policies, mixing, EMA, frozen phase, features mode) for a
    # couple of steps at 32x32; random weights stand in for the pretrained ones.
    from cifar100.models import registry

    monkeypatch.setattr(registry, "load_backbone_weights", lambda *a, **k: None)
    cfg = apply_overrides(
        load_preset(preset),
        [f"data.path={archive}", "model.resize=1", "train.epochs=2", "train.batch_size=32",
         "train.eval_batch_size=64", "train.warmup_epochs=0.5", "data.limit_test=20"],
    )  # fmt: skip
    cfg.train.freeze_epochs = min(cfg.train.freeze_epochs, 1)
    result = train(cfg, out=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False,
                   stop_after_steps=5)  # fmt: skip
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert Checkpoint.from_state(state, tmp_path / "run" / "last.pt").info.config.preset == preset
    if cfg.train.mode == "features":  # head epochs are seconds: it stops at epoch ends only
        assert result.stopped is None and result.test["images"] == 20
    else:
        # 3 steps an epoch: stopped in epoch 2, fine-tuning, after a frozen epoch 1 if any.
        assert result.stopped == "max_steps" and state["position"]["step"] == 2
        first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
        assert first["phase"] == ("frozen" if cfg.train.freeze_epochs else "finetune")
        assert state["phase"] == "finetune"


@pytest.mark.slow
def test_evaluate_prints_and_writes_json(trained, capsys):
    run, cache = trained
    assert cli.main(["evaluate", str(run), "--cache-dir", str(cache), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "superclass" in out
    assert (
        cli.main(
            [
                "evaluate",
                str(run),
                "--checkpoint",
                "best",
                "--json",
                "--cache-dir",
                str(cache),
                "--no-progress",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 60 and len(result["per_superclass"]) == 20
    assert result["checkpoint"].endswith("best.pt")


@pytest.mark.slow
def test_evaluate_keeps_the_runs_wall_time_and_the_predictions_training_wrote(trained, capsys):
    from cifar100.predictions_file import read_predictions

    run, cache = trained
    trained_record = json.loads((run / "evaluation.json").read_text())
    trained_logits = read_predictions(run / "predictions.npz")["logits"]
    assert trained_record["predictions"] == str(run / "predictions.npz")
    assert cli.main(["evaluate", str(run), "--cache-dir", str(cache), "--no-progress"]) == 0
    again = json.loads((run / "evaluation.json").read_text())
    assert again["train_wall_s"] == trained_record["train_wall_s"]  # compare shows one time
    assert again["top1"] == trained_record["top1"]
    assert np.allclose(read_predictions(run / "predictions.npz")["logits"], trained_logits,
                       atol=1e-5)  # fmt: skip


@pytest.mark.slow
def test_predict_reports_bad_files_and_still_predicts_the_rest(trained, tmp_path, capsys):
    run, _ = trained
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), np.uint8)).save(
        tmp_path / "photo.png"
    )
    Image.fromarray(np.zeros((32, 32), np.uint8), mode="L").save(tmp_path / "grey.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    files = [str(tmp_path / n) for n in ("photo.png", "broken.jpg", "grey.jpg")]
    assert cli.main(["predict", str(run), *files, "-k", "3", "--json"]) == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["path"] for x in lines] == files
    assert lines[1]["error"].startswith("not a readable image")  # the path is its own key
    assert cli.main(["predict", str(run), files[1]]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{files[1]}: error: ") and err.count("broken.jpg") == 1  # once
    for good in (lines[0], lines[2]):
        probs = [p["probability"] for p in good["predictions"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0001
    assert cli.main(["predict", str(run), files[0]]) == 0
    assert capsys.readouterr().out.startswith(files[0] + ": ")
    # A folder stands for its images (sorted, hidden ones left out, non-images ignored).
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes((tmp_path / "photo.png").read_bytes())
    (tmp_path / "sub" / "photo2.png").write_bytes((tmp_path / "photo.png").read_bytes())
    assert cli.main(["predict", str(run), str(tmp_path), "--json"]) == 1  # broken.jpg
    paths = [json.loads(x)["path"] for x in capsys.readouterr().out.splitlines()]
    assert paths == sorted([*files, str(tmp_path / "sub" / "photo2.png")])
    assert cli.main(["predict", str(run), str(tmp_path / "sub" / "photo2.png"),
                     str(tmp_path / "empty")]) == 1  # fmt: skip
    (tmp_path / "empty").mkdir()
    assert cli.main(["predict", str(run), str(tmp_path / "empty")]) == 1
    assert "a folder holding no image files" in capsys.readouterr().err


@pytest.mark.slow
def test_frozen_phase_keeps_the_backbone_and_its_statistics(archive, tmp_path, monkeypatch):
    # Stand in for pretrained weights (none can be downloaded here) to exercise the frozen phase.
    from cifar100.models import registry

    monkeypatch.setattr(registry, "load_backbone_weights", lambda *a, **k: None)
    cfg = apply_overrides(
        load_preset("seed"),
        [
            f"data.path={archive}",
            "model.resize=1",
            "train.epochs=1",
            "train.freeze_epochs=1",
            "train.batch_size=32",
        ],
    )
    torch.manual_seed(0)
    before = registry.build_model(cfg.model, 100).backbone.state_dict()
    train(cfg, out=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    after = {
        k[len("backbone.") :]: v for k, v in state["model"].items() if k.startswith("backbone.")
    }
    assert state["phase"] == "frozen"
    # Same seed -> same initial backbone; nothing in it moved, running statistics included.
    assert all(torch.equal(before[k], after[k]) for k in before)
    head_moved = [k for k in state["model"] if k.startswith("head.")]
    assert head_moved


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "--data", "/nonexistent/c100.tar.gz", "--weights", "none"], "/nonexistent"),
        (["evaluate", "/nonexistent/run"], "no such run directory"),
        (["predict", "/nonexistent/run", "x.png"], "no such run directory"),
        (["train", "--preset", "nope"], "unknown preset"),
        (["train", "--set", "train.lr=fast"], "expected float"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(argv, words, capsys, tmp_path):
    assert cli.main([*argv, *(["--cache-dir", str(tmp_path)] if argv[0] == "train" else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and "Traceback" not in err


def test_unavailable_weights_are_one_clear_line(archive, tmp_path, capsys):
    rc = cli.main(
        [
            "train",
            "--weights",
            "imagenet",
            "--data",
            str(archive),
            "--cache-dir",
            str(tmp_path),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--weights none" in err and "\n" not in err


@pytest.mark.slow
def test_a_run_stopped_before_its_first_checkpoint_starts_again(trained, tmp_path, capsys):
    run, cache = trained
    early = tmp_path / "early"
    early.mkdir()
    for name in ("config.json", "environment.json"):  # all an interrupted first epoch leaves
        shutil.copy(run / name, early / name)
    rc = cli.main(["train", "--resume", str(early), "--cache-dir", str(cache), "--no-progress"])
    assert rc == 0 and "has no checkpoint to continue from" in capsys.readouterr().out
    _same_run(run, early)  # the saved config, from the start: the same run
    (early / "last.pt").unlink()  # trained epochs but no last.pt: not silently redone
    rc = cli.main(["train", "--resume", str(early), "--cache-dir", str(cache), "--no-progress"])
    assert rc == 2 and "last.pt" in capsys.readouterr().err


def test_an_existing_run_is_never_overwritten(trained, capsys):
    run, cache = trained
    before = (run / "last.pt").read_bytes()
    rc = cli.main(
        [
            "train",
            "--preset",
            "scratch",
            "--out",
            str(run),
            "--cache-dir",
            str(cache),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    # A finished run: resuming it would only test it again, so the way on is another --out.
    assert rc == 2 and "finished run" in err and "another --out" in err and "--resume" not in err
    assert (run / "last.pt").read_bytes() == before


@pytest.mark.slow
def test_init_starts_from_another_runs_weights(archive, trained, tmp_path):
    run, cache = trained
    cfg = apply_overrides(
        load_preset("seed"),
        [
            f"data.path={archive}",
            f"model.init={run}",
            "train.epochs=1",
            "train.batch_size=32",
            "train.lr=0",
            "train.head_lr=0",
            "train.freeze_epochs=0",
        ],
    )
    train(cfg, out=tmp_path / "init", cache_dir=cache, progress=False)
    # The cpu run's model settings came with its weights (resize 1, not the seed's 7), and
    # with lr 0 only batch-norm statistics may move.
    saved = json.loads((tmp_path / "init" / "config.json").read_text())["model"]
    assert saved["resize"] == 1 and saved["init"] == str(run)
    a = load_checkpoint(resolve_checkpoint(run))["model"]  # the run's tested weights (best.pt)
    b = load_checkpoint(tmp_path / "init" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a if "running" not in k and "num_batches" not in k)


@pytest.mark.slow
def test_features_mode_trains_the_head_on_cached_features(archive, tmp_path, capsys):
    args = ["train", "--preset", "scratch", "--data", str(archive), "--epochs", "3",
            "--set", "train.mode=features", "--set", "train.batch_size=32",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out
    assert "features: train computed" in first
    result = json.loads((tmp_path / "a" / "evaluation.json").read_text())
    assert (tmp_path / "a" / "predictions.npz").is_file()  # the test logits, kept for report
    # The checkpoint is a whole model: evaluating it through the backbone gives what the
    # cached features gave.
    assert cli.main(["evaluate", str(tmp_path / "a"), "--json", "--no-progress",
                     "--cache-dir", str(tmp_path / "cache")]) == 0  # fmt: skip
    again = json.loads(capsys.readouterr().out)
    assert again["top1"] == pytest.approx(result["top1"]) and again["images"] == 60
    records = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().split("\n")
               if x]  # fmt: skip
    assert [r["phase"] for r in records] == ["features"] * 3
    # A second run reuses the cached features.
    assert cli.main([*args, "--out", str(tmp_path / "b")]) == 0
    assert "features: train from cache" in capsys.readouterr().out


@pytest.mark.slow
def test_ctrl_c_stops_feature_extraction_at_once_and_head_epochs_cleanly(
    archive, tmp_path, monkeypatch
):
    # Extraction resumes from its cached parts, so Ctrl-C there stops at once (Python's own
    # handler); the head epochs, seconds each, finish the epoch and save first.
    from cifar100.engine import head_training

    handlers = {}
    extract, head_epoch = head_training.cached_features, head_training.train_head_epoch

    def watched(name, fn):
        def call(*args, **kwargs):
            handlers.setdefault(name, signal.getsignal(signal.SIGINT))
            return fn(*args, **kwargs)

        return call

    monkeypatch.setattr(head_training, "cached_features", watched("extract", extract))
    monkeypatch.setattr(head_training, "train_head_epoch", watched("epoch", head_epoch))
    cfg = apply_overrides(
        load_preset("scratch"),
        [f"data.path={archive}", "train.mode=features", "train.epochs=1", "train.batch_size=32"],
    )
    train(cfg, out=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    assert handlers["extract"] is signal.default_int_handler
    assert handlers["epoch"] is not signal.default_int_handler  # SignalStop's
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored after


@pytest.mark.slow
@pytest.mark.parametrize("finetune_bn", ["batch", "frozen"])
def test_finetune_bn_frozen_keeps_the_moving_statistics(archive, tmp_path, finetune_bn):
    # Keras's fine-tuning guide keeps batch norm in inference mode (training=False) while every
    # layer trains: its moving statistics stay, its scale and offset still learn.
    from cifar100.models import registry

    cfg = apply_overrides(
        load_preset("scratch"),
        [
            f"data.path={archive}",
            "train.epochs=1",
            "train.freeze_epochs=0",
            "train.batch_size=32",
            f"train.finetune_bn={finetune_bn}",
        ],
    )
    torch.manual_seed(0)
    before = registry.build_model(cfg.model, 100).backbone.state_dict()
    train(cfg, out=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    after = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    moved = {k for k, v in before.items() if not torch.equal(v, after["backbone." + k])}
    stats = {k for k in before if k.endswith(("running_mean", "running_var"))}
    scales = {
        k
        for k in before
        if k.endswith(".weight") and k[: -len("weight")] + "running_mean" in before
    }
    assert stats and scales <= moved  # the batch-norm scales train either way
    if finetune_bn == "frozen":
        assert not stats & moved
    else:
        assert stats <= moved
