"""cifar100.load and TrainedModel: one type for a trained model, from a run, a checkpoint or a
safetensors export, predicting on images of any kind exactly as `cifar100 predict` does."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import cifar100
from cifar100 import cli
from cifar100.data.images import decode_image
from cifar100.errors import CheckpointError, DataError
from tiny_run import SMALL, train_tiny


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("api"), epochs=2)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Images as users have them: other sizes, modes and formats."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (50, 70, 4), np.uint8), "RGBA")
    rgba.save(root / "wide.png")
    grey = Image.fromarray(rng.integers(0, 256, (64, 64), np.uint8), "L")
    grey.save(root / "grey.png")
    Image.fromarray(rng.integers(0, 256, (96, 80, 3), np.uint8)).save(root / "tall.jpg")
    return root


@pytest.mark.slow
def test_load_describes_the_model(run):
    out, _, _ = run
    model = cifar100.load(out, device="cpu")
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert model.classes[:2] == ["airplane", "automobile"] and len(model.classes) == 10
    assert model.image_size == 32 and model.backbone == "efficientnet_lite0"
    assert model.preprocessing == "lite" and model.runtime == "torch"
    assert model.test_top1 == evaluation["top1"] and model.info.run == str(out)
    assert model.info.epoch == 2 and model.info.saved_at
    assert "10 classes" in repr(model)
    assert model.source.name == "best.pt"  # the tested weights: the best validated (train.final)
    last = cifar100.load(out, checkpoint="last", device="cpu")
    assert last.source.name == "last.pt" and last.test_top1 is None  # evaluated: best.pt only


def test_every_kind_of_image_is_prepared_as_training_prepared_files(run, photos):
    out, _, _ = run
    model = cifar100.load(out, device="cpu")
    for name in ("wide.png", "grey.png", "tall.jpg"):
        path = photos / name
        want = decode_image(path, 32)  # what an image folder and `predict` decode it to
        as_pil = np.asarray(Image.open(path))
        for given in (path, str(path), path.read_bytes(), Image.open(path), as_pil):
            assert np.array_equal(model.prepare(given)[0], want), (name, type(given))
    batch = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), np.uint8)
    assert np.array_equal(model.prepare(batch), batch)
    assert model.prepare([]).shape == (0, 32, 32, 3)


def test_predict_and_probabilities_agree_with_the_cli(run, photos, capsys):
    out, _, _ = run
    model = cifar100.load(out, device="cpu")
    files = [photos / "wide.png", photos / "tall.jpg"]
    probs = model.probabilities(files)
    assert probs.shape == (2, 10) and probs.dtype == np.float32
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    predictions = model.predict(files, k=3)
    assert [len(p.top) for p in predictions] == [3, 3]
    assert predictions[0].label == model.classes[int(probs[0].argmax())]
    capsys.readouterr()
    assert cli.main(["predict", str(out), *map(str, files), "-k", "3", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    for line, p in zip(lines, predictions):
        assert [d["class"] for d in line["predictions"]] == [c for c, _ in p.top]
        assert [d["probability"] for d in line["predictions"]] == [round(q, 6) for _, q in p.top]


def test_images_that_cannot_be_used_are_one_clear_error(run):
    model = cifar100.load(run[0], device="cpu")
    with pytest.raises(DataError, match="float64 array; give uint8"):
        model.predict(np.zeros((32, 32, 3)))
    with pytest.raises(DataError, match=r"shape \(32, 32, 2\)"):
        model.predict(np.zeros((32, 32, 2), np.uint8))
    with pytest.raises(DataError, match="not a readable image"):
        model.predict(b"not an image")


@pytest.mark.slow
def test_a_safetensors_export_is_the_same_model_without_pickle(run, photos, tmp_path, capsys):
    out, cache, archive = run
    target = tmp_path / "model.safetensors"
    assert cli.main(["export", str(out), "--format", "safetensors", "--out", str(target)]) == 0
    assert str(target) in capsys.readouterr().out
    original = cifar100.load(out, device="cpu")

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used on the safetensors path")

    with pytest.MonkeyPatch.context() as mp:  # no pickle anywhere on this path
        mp.setattr(torch, "load", refuse)
        mp.setattr(pickle, "load", refuse)
        mp.setattr(pickle, "loads", refuse)
        mp.setattr(pickle, "Unpickler", refuse)
        exported = cifar100.load(target, device="cpu")
    files = [photos / "wide.png", photos / "grey.png"]
    assert np.array_equal(exported.probabilities(files), original.probabilities(files))
    assert exported.classes == original.classes
    assert original.test_top1 is not None and exported.test_top1 is None  # not measured yet
    # predict, evaluate and train --init take it too
    assert cli.main(["predict", str(target), str(files[0]), "--json"]) == 0
    init = tmp_path / "init"
    argv = ["train", *SMALL, "--data", str(archive), "--epochs", "1", "--out", str(init)]
    assert cli.main([*argv, "--init", str(target), "--cache-dir", str(cache)]) == 0
    assert json.loads((init / "config.json").read_text())["model"]["init"] == str(target)


def test_evaluate_of_an_export_gives_the_checkpoints_top1(run, tmp_path, capsys):
    out, cache, _ = run
    target = tmp_path / "m.safetensors"
    assert cli.main(["export", str(out), "--format", "safetensors", "--out", str(target)]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(target), "--cache-dir", str(cache), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == json.loads((out / "evaluation.json").read_text())["top1"]


def test_a_damaged_or_foreign_safetensors_file_is_refused(run, tmp_path, capsys):
    from safetensors.torch import save_file

    out, _, _ = run
    good = tmp_path / "m.safetensors"
    assert cli.main(["export", str(out), "--format", "safetensors", "--out", str(good)]) == 0
    raw = bytearray(good.read_bytes())
    raw[-100] ^= 0x40  # a byte inside the last tensor
    (tmp_path / "flipped.safetensors").write_bytes(bytes(raw))
    (tmp_path / "cut.safetensors").write_bytes(bytes(raw[: len(raw) // 2]))
    save_file({"w": torch.ones(2)}, str(tmp_path / "foreign.safetensors"))
    for name, words in [
        ("flipped", "do not match the digest"),
        ("cut", "damaged or not a safetensors file"),
        ("foreign", "not a cifar100 export"),
    ]:
        with pytest.raises(CheckpointError, match=words):
            cifar100.load(tmp_path / f"{name}.safetensors")
    capsys.readouterr()
    assert cli.main(["predict", str(tmp_path / "cut.safetensors"), "x.png"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cut.safetensors" in err


def test_export_refuses_to_overwrite_and_names_unknown_sources(run, tmp_path, capsys):
    out, _, _ = run
    target = tmp_path / "m.safetensors"
    argv = ["export", str(out), "--format", "safetensors", "--out", str(target)]
    assert cli.main(argv) == 0
    before = target.read_bytes()
    assert cli.main(argv) == 2
    assert "--force" in capsys.readouterr().err and target.read_bytes() == before
    assert cli.main([*argv, "--force"]) == 0
    empty = tmp_path / "empty-run"
    empty.mkdir()
    assert cli.main(["export", str(empty), "--format", "onnx"]) == 2
    assert "no last.pt" in capsys.readouterr().err


def test_bytes_and_file_objects_of_the_same_image_agree(run, photos):
    model = cifar100.load(run[0], device="cpu")
    data = (photos / "tall.jpg").read_bytes()
    a = model.prepare([data, bytearray(data), memoryview(data), Image.open(io.BytesIO(data))])
    assert all(np.array_equal(a[0], x) for x in a[1:])
    # The same pixels give the same probabilities (to rounding: a batch of 1 vs one of 4 may
    # take other kernels)
    assert np.allclose(model.probabilities(data)[0], model.probabilities(a)[3], atol=1e-6)


def test_a_keras_export_of_a_backbone_keras_lacks_says_what_to_use(run, capsys):
    out, _, _ = run
    assert cli.main(["export", str(out), "--format", "keras"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "efficientnet_lite0" in err and "--format onnx" in err
    assert not (out / "model.keras").exists()
