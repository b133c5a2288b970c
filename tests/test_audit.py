"""`cifar100 audit`: wrong labels, copies, leaks and outliers found in a small image folder
where they were planted, audit.csv read back by `train --exclude`, and bad input as one line."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from audit_data import PHOTOS, near_copy, photo_crops, write_folder

# Each test reads an audit (seconds: features and k heads), or trains.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """6 classes x 40 training crops with 12 labels flipped (moved to another class's folder),
    and planted: an exact and a near copy of test images in train, an exact copy within train.
    The audit runs once (about 10 s on 2 cores) for the tests that read it."""
    from cifar100.audit import audit

    root = tmp_path_factory.mktemp("planted") / "photos"
    x, y = photo_crops(40, seed=0)
    tx, ty = photo_crops(10, seed=1)
    rng = np.random.default_rng(5)
    flipped = rng.choice(len(y), 12, replace=False)
    given = y.copy()
    given[flipped] = (y[flipped] + rng.integers(1, len(PHOTOS), len(flipped))) % len(PHOTOS)
    n = len(x)
    x = np.concatenate([x, tx[:1], near_copy(tx[1])[None], x[5:6]])
    given = np.concatenate([given, ty[:2], given[5:6]])
    paths = write_folder(root, "train", x, given)
    test_paths = write_folder(root, "test", np.concatenate([tx, tx[3:4]]),
                              np.concatenate([ty, ty[3:4]]))  # fmt: skip
    cache = tmp_path_factory.mktemp("cache")
    result = audit(root, cache_dir=cache, out=root.parent / "audit", epochs=10, progress=False)
    return {
        "result": result,
        "root": root,
        "cache": cache,
        "flipped": {paths[i] for i in flipped},
        "leak": paths[n],
        "near_leak": paths[n + 1],
        "dup": (paths[5], paths[n + 2]),
        "test_dup": (test_paths[3], test_paths[-1]),
        "train_images": len(x),
    }


def test_flipped_labels_are_found(planted):
    found = {f.path for f in planted["result"].findings if f.kind == "label"}
    flipped = planted["flipped"]
    # cross-validated confident learning on photo crops: nearly every flip, few false alarms
    assert len(found & flipped) >= 10, (sorted(found), sorted(flipped))
    assert len(found - flipped) <= 3, sorted(found - flipped)
    for f in planted["result"].findings:
        if f.kind == "label" and f.path in flipped:
            true = f.path.split("/")[1]
            assert f.given == true and f.suggested != f.given  # the folder is the given label


def test_exact_copies_across_and_within_splits_are_found(planted):
    findings = planted["result"].findings
    leaks = [f for f in findings if f.kind == "leak"]
    assert [f.path for f in leaks] == [planted["leak"]]
    assert leaks[0].partner.startswith("test:") and leaks[0].score == 1.0
    dups = {f.split: f for f in findings if f.kind == "duplicate"}
    assert len(dups) == 2 and dups["train"].path in planted["dup"]
    assert dups["test"].path in planted["test_dup"] and dups["test"].partner.startswith("test:")


def test_near_copies_have_a_high_cosine_and_point_to_their_partner(planted):
    from cifar100.audit import NEAR_THRESHOLD

    test_paths = sorted(p.relative_to(planted["root"]).as_posix()
                        for p in (planted["root"] / "test").rglob("*.png"))  # fmt: skip
    near = [f for f in planted["result"].findings if f.path == planted["near_leak"]]
    assert [f.kind for f in near if f.kind != "label"] == ["near_leak"]
    # the partner is the test image it was made from: test/<class>/0001.png
    assert test_paths[int(near[0].partner.split(":")[1])].endswith("/0001.png")
    for f in planted["result"].findings:
        if f.kind in ("near_leak", "near_duplicate"):
            split, _, index = f.partner.partition(":")
            assert split in ("train", "test") and index.isdigit()
            assert NEAR_THRESHOLD <= f.score < 1.0


def test_outputs_are_written_and_the_page_is_self_contained(planted):
    result = planted["result"]
    page = result.html.read_text()
    assert "<img" in page and "data:image/png;base64," in page
    assert "src='http" not in page and 'src="http' not in page
    rows = list(csv.DictReader(result.csv.open()))
    assert len(rows) == len(result.findings)
    assert set(rows[0]) >= {"kind", "split", "index", "path", "given", "suggested", "score",
                            "sha256"}  # fmt: skip
    assert sum(result.summary["counts"].values()) == len(rows)


def test_train_exclude_leaves_out_the_rows_images(planted, tmp_path):
    """A user keeps only the label rows of audit.csv and trains without those images."""
    from cifar100.config import DataConfig
    from cifar100.data import load_data

    result = planted["result"]
    rows = list(csv.DictReader(result.csv.open()))
    kept = [r for r in rows if r["kind"] == "label" and r["split"] == "train"]
    edited = tmp_path / "edited.csv"
    with edited.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    cfg = DataConfig(dataset="folder", path=str(planted["root"]), exclude=str(edited))
    splits = load_data(cfg, planted["cache"], progress=False)
    assert len(splits.train) == planted["train_images"] - len(kept)
    assert not {r["path"] for r in kept} & set(splits.train.paths)
    assert splits.info["excluded"]["excluded"] == len(kept)


def test_exclude_of_another_datas_audit_is_one_line(planted, tmp_path):
    from cifar100.config import DataConfig
    from cifar100.data import load_data
    from cifar100.errors import DataError

    other = tmp_path / "other.csv"
    other.write_text("kind,split,index,sha256\nlabel,train,0," + "ab" * 32 + "\n")
    cfg = DataConfig(dataset="folder", path=str(planted["root"]), exclude=str(other))
    with pytest.raises(DataError, match=r"other.csv line 2: no training image left"):
        load_data(cfg, planted["cache"], progress=False)
    for text, problem in [
        ("kind,index\nlabel,0\n", "no split, sha256 column"),
        ("split,index,sha256\nvalidation,0," + "0" * 64 + "\n", "line 2: split 'validation'"),
        ("split,index,sha256\ntrain,x," + "0" * 64 + "\n", "line 2: index 'x' is not a whole"),
        ("split,index,sha256\ntrain,1,abc\n", "line 2: sha256 'abc' is not 64 hex"),
    ]:
        other.write_text(text)
        with pytest.raises(DataError, match=problem):
            load_data(cfg, planted["cache"], progress=False)


def test_bad_input_is_one_line(tmp_path):
    def audit_cli(*args):
        return subprocess.run([sys.executable, "-m", "cifar100", "audit", *args],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    missing = audit_cli(str(tmp_path / "nowhere"), "--no-progress")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "nowhere" in missing.stderr
    bad = audit_cli(str(tmp_path), "--folds", "1")
    assert bad.returncode == 2 and "--folds" in bad.stderr


def test_a_run_trains_without_the_rows_and_resumes_only_with_the_same_file(planted, tmp_path):
    from cifar100.config import apply_overrides, load_preset
    from cifar100.engine.train import train
    from cifar100.errors import ConfigError

    rows = list(csv.DictReader(planted["result"].csv.open()))
    edited = tmp_path / "audit.csv"
    with edited.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["split"] == "train")
    cfg = apply_overrides(load_preset("scratch"), [
        "data.dataset=folder", f"data.path={planted['root']}", f"data.exclude={edited}",
        "model.backbone=efficientnet_lite0", "model.resize=1", "train.batch_size=32",
        "train.epochs=2"])  # fmt: skip
    out = tmp_path / "run"
    result = train(cfg, out=out, cache_dir=planted["cache"], progress=False, stop_after_epochs=1)
    assert result.stopped
    env = (out / "environment.json").read_text()
    assert '"excluded"' in env and str(len([r for r in rows if r["split"] == "train"])) in env
    edited.write_text(edited.read_text() + "\n")  # the same rows, another file: refused too
    with pytest.raises(ConfigError, match="changed since"):
        train(resume=out, cache_dir=planted["cache"], progress=False)


def test_a_run_is_audited_on_its_own_data_and_its_model_warns_in_sample(tiny_run_copy, capsys):
    from cifar100.audit import audit

    run = tiny_run_copy
    cache = run.parent / "cache"
    result = audit(run, cache_dir=cache, use_model=True, progress=False, epochs=2)
    assert result.folder == run / "audit" and result.csv.is_file()
    assert "in sample" in result.summary["probabilities"]
    assert "trained on these labels" in capsys.readouterr().err
    folds = audit(run, cache_dir=cache, out=run / "audit-folds", folds=2, epochs=2,
                  progress=False)  # fmt: skip
    assert "2-fold cross-validation" in folds.summary["probabilities"]
    assert folds.summary["train_images"] == result.summary["train_images"]


def test_ctrl_c_leaves_no_half_written_audit(planted, tmp_path, monkeypatch):
    import cifar100.audit as audit_module

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "stopped"
    monkeypatch.setattr(audit_module, "scan_test", stopped)  # after the folds, before writing
    with pytest.raises(KeyboardInterrupt):
        audit_module.audit(planted["root"], cache_dir=planted["cache"], out=out, epochs=1,
                           progress=False)  # fmt: skip
    assert not out.exists() or not any(out.iterdir())


def test_a_cifar_archive_is_audited_as_a_folder_is(tiny_run_copy, tmp_path):
    """A CIFAR archive by its published name (or --dataset): findings name images by index."""
    import shutil

    from cifar100.audit import audit, guess_dataset

    archive = tmp_path / "cifar-10-python.tar.gz"
    shutil.copy(tiny_run_copy.parent / "c10.tar.gz", archive)
    assert guess_dataset(archive) == "cifar10" and guess_dataset(tmp_path / "x.tgz") == "folder"
    assert guess_dataset(tmp_path / "cifar-100-python") == "cifar100"
    result = audit(archive, cache_dir=tiny_run_copy.parent / "cache", out=tmp_path / "a",
                   folds=2, epochs=1, progress=False)  # fmt: skip
    assert result.summary["dataset"].startswith("cifar10") and result.summary["classes"] == 10
    rows = list(csv.DictReader(result.csv.open()))
    assert all(r["path"] == "" and r["index"].isdigit() for r in rows)


def test_a_run_whose_data_is_gone_is_one_line(tiny_run_copy, tmp_path):
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run_copy, run)
    config = json.loads((run / "config.json").read_text())
    config["data"]["path"] = str(tmp_path / "gone.tar.gz")
    (run / "config.json").write_text(json.dumps(config))
    done = subprocess.run([sys.executable, "-m", "cifar100", "audit", str(run), "--no-progress"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "gone.tar.gz" in done.stderr


def test_the_csv_lists_each_kind_most_suspect_first(planted):
    from cifar100.data.exclusions import KINDS

    rows = list(csv.DictReader(planted["result"].csv.open()))
    kinds = [r["kind"] for r in rows]
    assert kinds == sorted(kinds, key=list(KINDS).index)
    for kind in set(kinds):
        scores = [float(r["score"]) for r in rows if r["kind"] == kind]
        assert scores == sorted(scores, reverse=True)
