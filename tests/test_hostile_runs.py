"""Runs that something went wrong with: a best.pt that a full disk kept from being written, and
`compare` given runs of which some are broken. Each is told in one line, and the rest goes on."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch

from cifar100 import cli, fileio
from cifar100.config import load_preset
from cifar100.runtime import checkpoint as checkpoint_module
from cifar100.runtime.checkpoint import load_checkpoint, save_checkpoint
from synthetic_cifar import make_cifar10_archive
from test_run_safety import grow, small_filesystem, train_args


def lines_of(err: str) -> list[str]:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "unexpected error" not in err, err
    return lines


# --- 5. a best.pt that could not be written ------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_cifar10_archive(tmp_path_factory.mktemp("data") / "c10.tar.gz", 64, 32)


def fail_once(monkeypatch, name: str) -> None:
    """The next checkpoint save to a file called `name` runs into a full disk (as torch does
    when the disk fills while it writes); the others, and later ones, succeed."""
    real = checkpoint_module.torch_save_atomic
    failed = []

    def save(state, target, what, needed):
        if Path(target).name == name and not failed:
            failed.append(target)
            with fileio.atomic_path(target, what, needed) as tmp:
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
        real(state, target, what, needed)

    monkeypatch.setattr(checkpoint_module, "torch_save_atomic", save)


@pytest.mark.slow
def test_a_best_pt_the_disk_refused_is_written_when_the_run_resumes(
    archive, tmp_path, capsys, monkeypatch
):
    out, cache = tmp_path / "run", tmp_path / "cache"
    fail_once(monkeypatch, "best.pt")
    assert cli.main(train_args(archive, out, cache, epochs=1)) == 2
    (line,) = lines_of(capsys.readouterr().err)
    assert "no space left" in line and "best.pt" in line and f"--resume {out}" in line
    assert not (out / "best.pt").exists()
    assert cli.main(["train", "--resume", str(out), "--cache-dir", str(cache)]) == 0
    best, last = load_checkpoint(out / "best.pt"), load_checkpoint(out / "last.pt")
    assert best["epoch"] == last["epoch"] == 1
    assert all(torch.equal(best["model"][k], v) for k, v in last["model"].items())
    assert (out / "evaluation.json").is_file()


def test_a_disk_that_fills_between_last_pt_and_best_pt_loses_no_best_pt(archive, tmp_path, capsys):
    cache = tmp_path / "cache"
    with small_filesystem(tmp_path / "disk", 45) as disk:
        out = disk / "run"
        # epoch 1: last.pt (30 MB) fits, best.pt beside it does not
        assert cli.main(train_args(archive, out, cache, epochs=1)) == 2
        (line,) = lines_of(capsys.readouterr().err)
        assert f"no space left on {disk}" in line and "best.pt" in line
        assert (out / "last.pt").is_file() and not (out / "best.pt").exists()
        grow(disk, 200)
        assert cli.main(["train", "--resume", str(out), "--cache-dir", str(cache)]) == 0
        assert "was missing" in capsys.readouterr().out
        assert load_checkpoint(out / "best.pt")["epoch"] == 1


@pytest.mark.slow
def test_evaluate_says_why_best_pt_is_missing_and_what_to_do(archive, tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert cli.main(train_args(archive, out, cache, epochs=1)) == 0
    (out / "best.pt").unlink()
    capsys.readouterr()
    argv = ["evaluate", str(out), "--checkpoint", "best", "--cache-dir", str(cache)]
    assert cli.main(argv) == 2
    (line,) = lines_of(capsys.readouterr().err)
    assert "did its first epoch finish" not in line
    assert "best.pt" in line and f"cifar100 train --resume {out}" in line
    assert "--checkpoint last" in line
    # The resume it points to writes it again (the last epoch was the best: the only one).
    assert cli.main(["train", "--resume", str(out), "--cache-dir", str(cache)]) == 0
    assert load_checkpoint(out / "best.pt")["epoch"] == 1
    assert cli.main(argv) == 0


@pytest.mark.slow
def test_a_resume_that_cannot_bring_back_best_pt_says_so(archive, tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert cli.main(train_args(archive, out, cache, epochs=2)) == 0
    # As if epoch 1 had been the best: last.pt (epoch 2) does not hold best.pt's weights.
    state = load_checkpoint(out / "last.pt")
    state["best_epoch"] = 1
    save_checkpoint(state, out / "last.pt")
    (out / "best.pt").unlink()
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(out), "--cache-dir", str(cache)]) == 0
    said = capsys.readouterr()
    assert "best.pt" in said.out + said.err and "--checkpoint last" in said.out + said.err
    assert not (out / "best.pt").exists()


# --- 6. compare, with some runs broken ---------------------------------------------------------


def fake_run(path: Path, top1: float | None = 0.5) -> Path:
    """A run directory as compare reads it: config, metrics log and evaluation."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(load_preset("seed").to_dict()))
    record = {"epoch": 1, "phase": "finetune", "images_per_s": 100.0, "val_top1": 0.4}
    (path / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    if top1 is not None:
        (path / "evaluation.json").write_text(json.dumps({"top1": top1, "epoch": 1}))
    return path


@pytest.fixture
def broken_runs(tmp_path) -> dict[str, Path]:
    runs = {
        "no config": tmp_path / "not-a-run",
        "damaged config": fake_run(tmp_path / "bad-config"),
        "damaged evaluation": fake_run(tmp_path / "bad-eval"),
        "missing": tmp_path / "nowhere",
        "a file": tmp_path / "file.txt",
    }
    runs["no config"].mkdir()
    (runs["damaged config"] / "config.json").write_bytes(b"\xff\xfe\x00 binary")
    (runs["damaged evaluation"] / "evaluation.json").write_text('{"top1": 0.')
    runs["a file"].write_text("not a run")
    return runs


def test_compare_reads_the_runs_it_can_and_names_each_broken_one(tmp_path, broken_runs, capsys):
    good = [fake_run(tmp_path / "good-a", 0.61), fake_run(tmp_path / "good-b", 0.72)]
    argv = ["compare", str(good[0]), *map(str, broken_runs.values()), str(good[1])]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    table = captured.out.splitlines()
    assert len(table) == 3 and table[1].startswith("good-a") and table[2].startswith("good-b")
    assert "61.00%" in table[1] and "72.00%" in table[2]
    errors = lines_of(captured.err)
    assert len(errors) == len(broken_runs), errors
    for line, path in zip(errors, broken_runs.values()):
        assert str(path) in line and line.startswith("cifar100 compare: skipped: "), line
    assert cli.main([*argv, "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in rows] == ["good-a", "good-b"]


def test_compare_exits_2_when_no_run_can_be_read(broken_runs, capsys):
    assert cli.main(["compare", *map(str, broken_runs.values())]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(lines_of(captured.err)) == len(broken_runs)


def test_compare_leaves_out_values_of_the_wrong_type(tmp_path, capsys):
    odd = fake_run(tmp_path / "odd", top1=None)
    records = [{"epoch": "one", "val_top1": "high", "images_per_s": [1], "phase": ["x"]},
               {"epoch": 2, "val_top1": 0.3}]  # fmt: skip
    (odd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (odd / "evaluation.json").write_text(json.dumps({"top1": "90%", "train_wall_s": None}))
    (odd / "environment.json").write_text(json.dumps({"device": {"name": "x"}}))
    assert cli.main(["compare", str(odd)]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert line.startswith("odd") and "30.00%" in line and "90%" not in line


def test_a_config_json_that_is_a_folder_is_one_line(tmp_path, capsys):
    run = fake_run(tmp_path / "odd")
    (run / "config.json").unlink()
    (run / "config.json").mkdir()
    assert cli.main(["compare", str(run)]) == 2
    (line,) = lines_of(capsys.readouterr().err)
    assert str(run) in line


# --- 6. report, with a run's files damaged or holding values of the wrong type ------------------


@pytest.fixture(scope="module")
def trained(archive, tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    assert cli.main(train_args(archive, root / "run", root / "cache", epochs=1)) == 0
    return root / "run"


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("*.pt", "plots", "report.html"))
    return to


@pytest.mark.parametrize(
    "name, content",
    [
        ("config.json", b"\xff\xfe binary"),
        ("config.json", b"[1, 2]"),
        ("evaluation.json", b'{"top1": "90%"}'),
        ("evaluation.json", b"{}"),
    ],
)
def test_report_of_a_damaged_run_file_is_one_line(trained, tmp_path, capsys, name, content):
    run = copy_run(trained, tmp_path / "run")
    (run / name).write_bytes(content)
    capsys.readouterr()
    assert cli.main(["report", str(run)]) == 2
    (line,) = lines_of(capsys.readouterr().err)
    assert str(run / name) in line


@pytest.mark.slow
def test_report_leaves_out_values_of_the_wrong_type(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    records.insert(0, {"epoch": "zero", "val_top1": "high", "train_loss": [1], "phase": None})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    evaluation = json.loads((run / "evaluation.json").read_text())
    evaluation |= {"loss": "low", "ema": 3, "calibration": [1], "images": None}
    evaluation["per_class"] = {**evaluation["per_class"], "odd": "n/a"}
    (run / "evaluation.json").write_text(json.dumps(evaluation))
    capsys.readouterr()
    assert cli.main(["report", str(run)]) == 0
    assert lines_of(capsys.readouterr().err) == []
    page = (run / "report.html").read_text()
    assert "id='curves'" in page and "id='per_class'" in page
