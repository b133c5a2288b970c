"""`cifar100 import-keras`: a trained Keras model of the report becomes a run we can use."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cifar100 import cli
from cifar100.data.images import decode_image
from keras_oracle import keras_backbone, keras_predict, randomize_keras, report_model
from synthetic_cifar import make_cifar100_archive

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file:UserWarning"),
]


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    pytest.importorskip(
        "tensorflow", reason="TensorFlow is a test-only oracle; install tensorflow-cpu to run"
    )
    backbone = keras_backbone()
    randomize_keras(backbone, seed=5)
    model = report_model(backbone)
    for i, layer in enumerate(model.layers):
        if layer is not backbone:
            randomize_keras(layer, seed=50 + i, scale=8.0 if i == len(model.layers) - 1 else 1.0)
    path = tmp_path_factory.mktemp("keras") / "report.h5"
    model.save(path)
    return model, path


@pytest.mark.slow
def test_import_evaluate_and_predict_like_keras(keras_file, tmp_path, capsys):
    kmodel, path = keras_file
    archive = make_cifar100_archive(tmp_path / "c100.tar.gz", n_train=100, n_test=20)
    run = tmp_path / "imported"
    assert (
        cli.main(
            [
                "import-keras",
                str(path),
                "--out",
                str(run),
                "--data",
                str(archive),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "cifar100 evaluate" in capsys.readouterr().out

    # predict: the same image through our CLI and through Keras (fed x/127.5 - 1).
    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    assert cli.main(["predict", str(run), str(tmp_path / "x.png"), "-k", "3", "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)["predictions"]
    pixels = decode_image(tmp_path / "x.png", 32)[None].astype(np.float32)
    want = keras_predict(kmodel, pixels / 127.5 - 1.0)[0]
    from cifar100.runtime.checkpoint import Checkpoint

    classes = Checkpoint.load(run / "last.pt").info.classes
    for p in ours:
        assert p["probability"] == pytest.approx(float(want[classes.index(p["class"])]), abs=1e-4)

    assert (
        cli.main(
            [
                "evaluate",
                str(run),
                "--json",
                "--cache-dir",
                str(tmp_path / "cache"),
                "--no-progress",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 20 and len(result["per_superclass"]) == 20


def test_class_count_mismatch_is_one_line(keras_file, tmp_path, capsys):
    _, path = keras_file
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    rc = cli.main(
        ["import-keras", str(path), "--out", str(tmp_path / "r"), "--class-names", str(names)]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "100 outputs" in err and "\n" not in err
    assert not (tmp_path / "r" / "last.pt").exists()


def test_not_a_keras_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "model.h5"
    bad.write_bytes(b"not hdf5")
    rc = cli.main(["import-keras", str(bad), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "model.h5" in err and "\n" not in err


SCALINGS = {
    "tf": lambda x: x / 127.5 - 1.0,
    "none": lambda x: x / 255.0,
    "raw": lambda x: x,
    "torch": lambda x: (x / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
}


@pytest.mark.slow
@pytest.mark.parametrize("preprocess", sorted(SCALINGS))
def test_each_preprocess_choice_reaches_predict_as_keras_sees_it(
    preprocess, keras_file, tmp_path, capsys
):
    """--preprocess none was once stored as "none", read back as "unset" and run as tf."""
    kmodel, path = keras_file
    names = tmp_path / "names.txt"
    names.write_text("".join(f"class{i}\n" for i in range(100)))
    run = tmp_path / "imported"
    argv = ["import-keras", str(path), "--out", str(run), "--class-names", str(names)]
    assert cli.main([*argv, "--preprocess", preprocess]) == 0
    rng = np.random.default_rng(1)
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    capsys.readouterr()
    assert cli.main(["predict", str(run), str(tmp_path / "x.png"), "-k", "100", "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)["predictions"]
    pixels = decode_image(tmp_path / "x.png", 32)[None].astype(np.float32)
    want = keras_predict(kmodel, SCALINGS[preprocess](pixels).astype(np.float32))[0]
    got = np.zeros(100)
    for p in ours:
        got[int(p["class"].removeprefix("class"))] = p["probability"]
    assert np.abs(got - want).max() < 1e-4
