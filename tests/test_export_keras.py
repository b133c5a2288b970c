"""`write_keras_model`: our report model as a Keras 3 .keras file that Keras itself loads and
that predicts what ours does, from raw pixels. TensorFlow is the test-only oracle."""

from __future__ import annotations

import io
import json
import zipfile

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import cifar100
from cifar100 import cli
from cifar100.config import ModelConfig
from cifar100.errors import ModelError, WriteError
from cifar100.export.keras_file import RESCALING, write_keras_model
from cifar100.models.head import Preprocess
from cifar100.models.keras_report import load_keras_report_model
from cifar100.models.registry import build_model
from keras_oracle import keras_backbone, keras_predict, randomize_keras, report_model

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't:DeprecationWarning"),
]

TOL = 1e-4  # on probabilities, as the import tests
NEEDS_TF = "TensorFlow is a test-only oracle; install tensorflow-cpu to run"


def randomize(model: nn.Module, seed: int, output_scale: float = 4.0) -> nn.Module:
    """Random weights and batch-norm statistics, drawn as keras_oracle.randomize_keras draws them.

    Kernels N(0, 1/fan_in) keep activations O(1) through 50 layers (keras_oracle.randomize_torch's
    gammas of about 0.1 give every image nearly the same features); a larger output kernel makes
    the probabilities peaked, not a flat 1/n each.
    """
    g = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std)

    def uniform(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g) * (high - low) + low)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                scale = output_scale if m is model.head.dense_1 else 1.0
                normal(m.weight, scale / m.weight[0].numel() ** 0.5)
                if m.bias is not None:
                    normal(m.bias, 0.2)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                uniform(m.weight, 0.5, 1.5)
                normal(m.bias, 0.2)
                normal(m.running_mean, 0.2)
                uniform(m.running_var, 0.5, 2.0)
    return model.eval()


def report_classifier(num_classes: int = 10, seed: int = 0, **settings):
    cfg = ModelConfig(backbone="resnet50v2", weights="none", **settings)
    return randomize(build_model(cfg, num_classes), seed), cfg


def pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Random uint8-valued images, NHWC float32, as a Keras consumer feeds them."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.float32)


def our_probabilities(model, nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.predict_proba(torch.from_numpy(nhwc).permute(0, 3, 1, 2)).numpy()


def exported_probabilities(kmodel, nhwc: np.ndarray) -> np.ndarray:
    """An export's "probabilities" output (of four, by name) in inference mode."""
    return np.asarray(kmodel(nhwc, training=False)["probabilities"])


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    diff = np.abs(got - want).max()
    # Log-probabilities are the logits up to a constant: they show errors small ones hide.
    log_diff = np.abs(np.log(got) - np.log(want)).max()
    print(f"{what}: max |prob diff| {diff:.2e}, max |log-prob diff| {log_diff:.2e}")
    assert got.shape == want.shape
    assert diff < TOL and log_diff < 1e-3
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("tensorflow", reason=NEEDS_TF)
    import keras

    return keras


@pytest.fixture(scope="module")
def classifier():
    return report_classifier(resize=2)


# (settings, image size): each kind of preprocessing layer, the leaky head, with and without
# upsampling. raw and lite differ from tf and none only in Rescaling's numbers, checked below.
CASES = {
    "tf": (dict(resize=2), 32),
    "none-leaky": (
        dict(
            resize=1,
            preprocess="none",
            activation="leaky_relu",
            leaky_slope=0.1,
            head_units=64,
            dropout=0.5,
            bn_momentum=0.9,
        ),
        64,
    ),
    "torch": (dict(resize=3, preprocess="torch"), 24),  # Rescaling, then Normalization
}


@pytest.fixture(scope="module")
def exports(keras, tmp_path_factory):
    """case -> (our model, its .keras file, the Keras model loaded from it), each made once."""
    made = {}

    def export(case: str):
        if case not in made:
            settings, size = CASES[case]
            model, cfg = report_classifier(seed=3, **settings)
            path = write_keras_model(model, cfg, size, tmp_path_factory.mktemp(case) / "m.keras")
            made[case] = model, path, keras.saving.load_model(path)
        return made[case]

    return export


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_keras_loads_it_and_predicts_as_we_do(exports, case):
    model, _, kmodel = exports(case)
    size = CASES[case][1]
    assert tuple(kmodel.input_shape) == (None, size, size, 3)
    x = pixels(4, size)
    want = our_probabilities(model, x)
    assert_close(exported_probabilities(kmodel, x), want, f"export {case}")
    # The comparison would see a preprocessing error: a 10% one differs far more than TOL.
    assert np.abs(exported_probabilities(kmodel, x * 0.9) - want).max() > 20 * TOL
    if case == "none-leaky":  # the settings that only training uses carry over too
        layers = {layer.name: layer for layer in kmodel.layers}
        assert layers["dropout"].rate == 0.5 and layers["leaky_re_lu"].negative_slope == 0.1
        assert layers["batch_normalization"].momentum == pytest.approx(0.9)
        assert layers["batch_normalization"].epsilon == pytest.approx(1e-3)
        post_bn = layers["resnet50v2"].get_layer("post_bn")
        assert post_bn.epsilon == pytest.approx(1.001e-5) and post_bn.momentum == 0.9


@pytest.mark.parametrize("mode", ["tf", "none", "raw", "lite"])
def test_rescaling_is_our_preprocessing(mode):
    scale, offset = RESCALING[mode]
    x = torch.arange(256, dtype=torch.float32)
    assert torch.allclose(x * scale + offset, Preprocess(mode)(x), atol=1e-6)


def layout(path) -> tuple:
    """A .keras file's members, its layers' names in order (the backbone's too), and its
    weights file's tree: each group's attributes, each dataset's shape."""
    with zipfile.ZipFile(path) as z:
        members = sorted(z.namelist())
        config = json.loads(z.read("config.json"))
        weights = io.BytesIO(z.read("model.weights.h5"))
    layers = config["config"]["layers"]
    backbone = next(la for la in layers if la["class_name"] == "Functional")
    order = [la["name"] for la in layers + backbone["config"]["layers"]]
    tree = {}

    def record(key: str, obj) -> None:
        tree[key] = obj.shape if isinstance(obj, h5py.Dataset) else dict(obj.attrs)

    with h5py.File(weights) as f:
        f.visititems(record)
    return members, order, tree


@pytest.mark.slow
def test_layout_is_the_one_keras_writes(exports, tmp_path):
    """Keras's own save of the loaded export has the same layers in the same order, and the
    same weight groups and shapes: the keys Keras finds weights by are the ones it writes."""
    _, ours, kmodel = exports("tf")
    kmodel.save(tmp_path / "theirs.keras")
    assert layout(ours) == layout(tmp_path / "theirs.keras")


@pytest.mark.slow
def test_round_trip_keras_import_export_keras(keras, tmp_path):
    """The report's Keras model -> import-keras -> our checkpoint -> cifar100.load -> export
    -> Keras: the same probabilities as the original, which takes x/127.5 - 1 where the export
    takes raw pixels."""
    backbone = keras_backbone()
    randomize_keras(backbone, seed=7)
    original = report_model(backbone)
    for i, layer in enumerate(original.layers):
        if layer is not backbone:
            last = i == len(original.layers) - 1
            randomize_keras(layer, seed=70 + i, scale=8.0 if last else 1.0)
    source = tmp_path / "report.keras"
    original.save(source)
    names = tmp_path / "names.txt"
    names.write_text("".join(f"class{i}\n" for i in range(100)))
    run = tmp_path / "imported"
    argv = ["import-keras", str(source), "--out", str(run), "--class-names", str(names)]
    assert cli.main(argv) == 0

    trained = cifar100.load(run, device="cpu")
    info = trained.info
    exported = write_keras_model(trained.module, info.model, info.image_size, tmp_path / "b.keras")
    x = pixels(3, 32, seed=1)
    want = keras_predict(original, x / 127.5 - 1.0)
    assert_close(exported_probabilities(keras.saving.load_model(exported), x), want, "round trip")


@pytest.mark.slow
def test_import_keras_reads_our_export_back_exactly(classifier, tmp_path):
    """Without TensorFlow: our own reader takes the export back to the very same tensors."""
    model, cfg = classifier
    imported = load_keras_report_model(write_keras_model(model, cfg, 32, tmp_path / "m.keras"))
    arch = imported.architecture
    assert (arch.resize, arch.input_size, arch.num_classes, arch.preprocess) == (2, 32, 10, "tf")
    assert arch.output_activation == "softmax"
    expected = model.state_dict()
    assert set(imported.state_dict) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(imported.state_dict[key], tensor), key


@pytest.mark.slow
def test_other_preprocessing_is_never_read_as_the_reports(tmp_path):
    """A reader that assumes the report's x/127.5 - 1 finds a Rescaling that says otherwise."""
    model, cfg = report_classifier(resize=1, preprocess="none")
    path = write_keras_model(model, cfg, 32, tmp_path / "m.keras")
    with pytest.raises(ModelError, match="Rescaling"):
        load_keras_report_model(path)


def test_other_backbones_are_one_clear_line(tmp_path):
    cfg = ModelConfig(backbone="efficientnet_lite0", weights="none")
    model = build_model(cfg, 10)
    with pytest.raises(ModelError) as e:
        write_keras_model(model, cfg, 32, tmp_path / "m.keras")
    message = str(e.value)
    assert "efficientnet_lite0" in message and "onnx" in message and "safetensors" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_unwritable_output_is_a_clean_error_and_leaves_nothing(classifier, tmp_path):
    model, cfg = classifier
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(WriteError) as e:
        write_keras_model(model, cfg, 32, blocker / "m.keras")
    assert "m.keras" in str(e.value) and "\n" not in str(e.value)

    taken = tmp_path / "taken.keras"  # a directory where the file would go
    (taken / "inside").mkdir(parents=True)
    with pytest.raises(WriteError) as e:
        write_keras_model(model, cfg, 32, taken)
    assert "taken.keras" in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken.keras"]
    assert [p.name for p in taken.iterdir()] == ["inside"]

    with pytest.raises(ModelError, match=r"\.keras"):
        write_keras_model(model, cfg, 32, tmp_path / "m.zip")
