"""Where the model looked (runtime/explain.py, TrainedModel.explain, predict --explain): the maps
are checked to be right, not only drawn. A tiny model learns classes that only the left half of
an image shows (a coloured square there; the right half is noise), so both methods must put most
of the predicted class's map on the left."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cifar100
from cifar100 import cli
from cifar100.config import ModelConfig
from cifar100.errors import ModelError
from cifar100.models.head import Classifier
from cifar100.models.registry import BACKBONES, build_model
from cifar100.predict import explanation_names
from cifar100.runtime.explain import explain, feature_map_size, overlay, side_by_side

SIZE = 32
COLOURS = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230]])  # the classes: red, green, blue


def left_half_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is the colour of a 10-pixel square somewhere in the left half (on
    grey); the right half is uniform noise, the same for every class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(COLOURS), n)
    x = rng.integers(0, 256, (n, SIZE, SIZE, 3)).astype(np.uint8)
    x[:, :, : SIZE // 2] = rng.integers(100, 156, (n, SIZE, SIZE // 2, 3))
    for i in range(n):
        r, c = rng.integers(0, SIZE - 10), rng.integers(0, SIZE // 2 - 10)
        x[i, r : r + 10, c : c + 10] = COLOURS[labels[i]]
    return x, labels


class SmallBackbone(nn.Sequential):
    """Three convolutions, a 16x16 last feature map at 32 px: local enough for a map to show
    which half it saw, and trained in seconds."""

    out_features = 16

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        )  # fmt: skip


@pytest.fixture(scope="module")
def looking_model() -> Classifier:
    torch.manual_seed(0)
    model = Classifier(SmallBackbone(), len(COLOURS), preprocess="none", resize=1, head_units=16,
                       dropout=0.0)  # fmt: skip
    # No batch norm in the head: a few dozen steps would leave its running statistics (Keras
    # momentum) far from the features, and the model unlike itself in eval mode.
    model.head.batch_normalization = nn.Identity()
    images, labels = left_half_images(256, seed=0)
    x, y = torch.as_tensor(images).permute(0, 3, 1, 2).float(), torch.as_tensor(labels)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(50):
        i = torch.randint(0, len(x), (32,))
        loss = nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_the_map_lies_on_the_half_that_decides_the_class(looking_model, method):
    images, labels = left_half_images(12, seed=1)
    with torch.no_grad():
        predicted = looking_model(torch.as_tensor(images).permute(0, 3, 1, 2).float()).argmax(1)
    assert (predicted.numpy() == labels).mean() >= 0.9  # it learned the task
    maps = explain(looking_model, torch.as_tensor(images), method=method)
    assert maps.shape == (12, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1)
    left = maps[:, :, : SIZE // 2].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
    assert left.mean() > 0.7, left.round(2)
    assert (left > 0.5).mean() >= 0.8, left.round(2)  # most images, not a few extreme ones


@pytest.mark.slow
def test_class_index_chooses_the_class_explained(looking_model):
    images, labels = left_half_images(6, seed=2)
    x = torch.as_tensor(images)
    predicted = explain(looking_model, x)
    assert np.allclose(predicted, explain(looking_model, x, class_index=labels.tolist()))
    other = [int((c + 1) % len(COLOURS)) for c in labels]
    assert not np.allclose(predicted, explain(looking_model, x, class_index=other))
    one = explain(looking_model, x, class_index=other[0])  # one class for all
    assert np.allclose(one[0], explain(looking_model, x[:1], class_index=other)[0])
    for bad in (3, -1, True, "cat", [0, 1, 2, 0, 1, 9]):
        with pytest.raises(ModelError) as e:
            explain(looking_model, x, class_index=bad)
        assert "\n" not in str(e.value) and "0..2" in str(e.value)
    with pytest.raises(ModelError, match="gradcam or occlusion"):
        explain(looking_model, x, method="lime")


@pytest.mark.slow
def test_the_feature_map_size_says_how_coarse_a_map_is(looking_model):
    assert feature_map_size(looking_model, 32) == (16, 16)
    assert feature_map_size(looking_model, 8) == (4, 4)
    assert not looking_model.training


def test_side_by_side_scales_a_small_image_up_by_whole_pixels():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
    cold = side_by_side(image, np.zeros((32, 32), np.float32))
    assert cold.shape == (128, 128 * 2 + 4, 3) and cold.dtype == np.uint8
    assert np.array_equal(cold[::4, :128:4], image)  # nearest: each pixel a 4x4 block
    assert np.array_equal(cold[:, -128:], cold[:, :128])  # a cold map leaves the image alone
    flat = side_by_side(image, np.ones((32, 32), np.float32))  # drawn from its least value
    assert np.array_equal(flat, cold)
    half = np.zeros((32, 32), np.float32)
    half[:, :16] = 0.9
    tinted = side_by_side(image, half)[:, -128:]
    assert redness(tinted[:, :56]) - redness(cold[:, :56]) > 50  # the hot half red
    assert np.array_equal(tinted[:, 72:], cold[:, 72:128])  # the cold half as it was
    assert redness(overlay(image, np.ones((32, 32), np.float32))) - redness(image) > 50


def redness(pixels: np.ndarray) -> float:
    p = pixels.astype(np.float64)
    return float((p[..., 0] - (p[..., 1] + p[..., 2]) / 2).mean())


def test_explanation_names_are_unique_and_say_which_file():
    names = ["/d/cat/0001.jpg", "/d/dog/0001.jpg", "a.png", "A.jpg", "b/c.jpg", "/x/y/c.png"]
    assert explanation_names(names) == [
        "cat_0001.png", "dog_0001.png", "a.png", "A-2.png", "b_c.png", "y_c.png"
    ]  # fmt: skip
    assert explanation_names(["/" + "n" * 300 + ".jpg"]) == ["n" * 120 + ".png"]


# --- a trained run: TrainedModel.explain and predict --explain ----------------------------------


@pytest.fixture(scope="module")
def run_and_onnx(tiny_run_copy):
    assert cli.main(["export", str(tiny_run_copy), "--format", "onnx"]) == 0
    return tiny_run_copy, tiny_run_copy / "model.onnx"


@pytest.mark.slow
def test_trained_model_explain_checks_its_model_and_class(run_and_onnx):
    run, onnx_file = run_and_onnx
    model = cifar100.load(run, device="cpu")
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 50, 3), np.uint8)
    maps = model.explain(images, class_index=2)
    assert maps.shape == (3, model.image_size, model.image_size)
    with pytest.raises(ModelError, match=r"class index 10: a class number 0\.\.9"):
        model.explain(images, class_index=10)
    with pytest.raises(ModelError, match="need the PyTorch model") as e:
        cifar100.load(onnx_file).explain(images)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_predict_explain_writes_one_picture_per_readable_image(run_and_onnx, tmp_path, capsys):
    run, _ = run_and_onnx
    rng = np.random.default_rng(0)
    for folder, size in (("cat", (40, 60)), ("dog", (32, 32))):
        (tmp_path / folder).mkdir()
        pixels = rng.integers(0, 256, (*size, 3), np.uint8)
        Image.fromarray(pixels).save(tmp_path / folder / "1.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not an image")
    out = tmp_path / "why"
    inputs = [str(tmp_path / "cat"), str(tmp_path / "dog"), str(tmp_path / "broken.jpg")]
    argv = ["predict", str(run), *inputs, "--explain", str(out), "--json"]
    assert cli.main(argv) == 1  # broken.jpg: reported, the others still predicted and explained
    captured = capsys.readouterr()
    lines = [json.loads(x) for x in captured.out.splitlines()]
    assert [("error" in x) for x in lines] == [False, False, True]
    assert "2 explanations written to" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["cat_1.png", "dog_1.png"]  # no temporaries
    with Image.open(out / "cat_1.png") as picture:
        assert picture.format == "PNG" and picture.mode == "RGB"
        assert picture.width >= 2 * 128 and picture.height > 128  # scaled up, a caption under it
        label = lines[0]["predictions"][0]["class"]
        assert picture.text["prediction"].startswith(label + " ")
        # The tiny model's last feature map is 1x1 at 32 px: Grad-CAM would be flat, so the
        # default is occlusion (asked for by name, gradcam is refused: the next test).
        assert picture.text["method"] == "occlusion" and picture.text["source"].endswith("1.png")


@pytest.mark.slow
def test_predict_explain_refuses_what_it_cannot_explain_in_one_line(run_and_onnx, tmp_path, capsys):
    _, onnx_file = run_and_onnx
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    argv = ["predict", str(onnx_file), str(image), "--explain", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "--explain needs the PyTorch model" in err and "\n" not in err and not captured.out
    assert not (tmp_path / "out").exists()
    run, _ = run_and_onnx
    argv = ["predict", str(run), str(image), "--explain", str(tmp_path / "out")]
    assert cli.main([*argv, "--explain-method", "gradcam"]) == 2
    err = capsys.readouterr().err.strip()
    assert "single cell (1x1)" in err and "--explain-method occlusion" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_a_map_that_is_the_same_everywhere_is_all_zero(tiny_trained):
    # The tiny model's last feature map is 1x1: Grad-CAM cannot say where, and says nothing.
    model = cifar100.load(tiny_trained)
    maps = model.explain(np.full((2, 32, 32, 3), 128, np.uint8))
    assert maps.shape == (2, 32, 32) and not maps.any()


@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_registered_backbone_is_explained(backbone):
    """Grad-CAM follows each registered backbone's own last feature map: the maps come out at
    the image's size, in [0, 1], peaked (not flat) where the feature map has several cells.
    (Occlusion needs no layer: any model, above.)"""
    settings = ModelConfig(backbone=backbone, weights="none", resize=2)  # 32 -> 64 inside
    model = build_model(settings, num_classes=3).eval()
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8))
    assert feature_map_size(model, 32) == (2, 2)
    maps = explain(model, pixels, class_index=[0, 2])
    assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    assert all(m.max() == 1 or not m.any() for m in maps)
