"""Keras weights -> our models: file layouts, strictness, the download path, and (where
TensorFlow is installed) equality with Keras itself on the same weights and inputs."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile

import numpy as np
import pytest
import torch

from cifar100.config import ModelConfig
from cifar100.errors import ChecksumError, DownloadError, ModelError
from cifar100.models import ResNet50V2, build_model, resnet_v2
from cifar100.models.keras_report import load_keras_report_model
from cifar100.models.registry import get_backbone
from cifar100.models.resnet_v2 import PUBLISHED, load_keras_resnet50v2_h5
from cifar100.weights.keras_h5 import open_keras_file, read_keras_layers
from cifar100.weights.sources import MIRROR_ENV, resolve_weights
from http_server import serve_directory
from keras_oracle import (
    keras_backbone,
    keras_legacy_layers,
    keras_predict,
    randomize_keras,
    randomize_torch,
    report_model,
    torch_to_keras_layers,
    write_keras3_weights_h5,
    write_legacy_h5,
)

h5py = pytest.importorskip("h5py", reason="reading Keras weights needs h5py")

CANONICAL = "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
TF_SKIP = "TensorFlow is a test-only oracle; install tensorflow-cpu to run"
TF_KERAS_SKIP = "tf_keras (Keras 2, the canonical file's writer) is a test-only oracle; install it"
TOL = 1e-4
# Keras's own noise: its internals under NumPy 2, and tf_keras on the legacy .h5 format.
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file:UserWarning"),
]


@pytest.fixture(autouse=True)
def _no_real_weights_host(monkeypatch, tmp_path):
    # The published URL must never be contacted from a test: a closed local port instead. An
    # own cache per test, so that no test sees another's downloads.
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9/")
    monkeypatch.setenv("CIFAR100_CACHE", str(tmp_path / "user-cache"))


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def torch_backbone() -> ResNet50V2:
    return randomize_torch(ResNet50V2(), seed=1).eval()


@pytest.fixture(scope="module")
def backbone_layers(torch_backbone):
    names = torch_backbone.keras_layer_names()
    return torch_to_keras_layers(torch_backbone, names), list(names.values())


@pytest.fixture(scope="module")
def legacy_file(tmp_path_factory, backbone_layers):
    """Our random backbone written in the canonical file's layout (Keras 2 save_weights)."""
    layers, order = backbone_layers
    order = ["input_1", "conv1_pad", *order[:1], "pool1_pad", "pool1_pool", *order[1:]]
    return write_legacy_h5(tmp_path_factory.mktemp("legacy") / CANONICAL, layers, order)


def assert_state_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


# --- without TensorFlow --------------------------------------------------------------------------


@pytest.mark.slow
def test_legacy_layout_round_trip(legacy_file, torch_backbone):
    state = load_keras_resnet50v2_h5(legacy_file)
    assert_state_equal(state, torch_backbone.state_dict())
    fresh = ResNet50V2()
    fresh.load_state_dict(state, strict=True)


def test_keras3_layout_round_trip(tmp_path, backbone_layers, torch_backbone):
    path = write_keras3_weights_h5(tmp_path / "w.weights.h5", backbone_layers[0])
    assert_state_equal(load_keras_resnet50v2_h5(path), torch_backbone.state_dict())


def test_keras3_layout_without_layer_names_is_refused(tmp_path, backbone_layers):
    path = write_keras3_weights_h5(tmp_path / "w.weights.h5", backbone_layers[0], names=False)
    with pytest.raises(ModelError, match="carries no layer name"):
        load_keras_resnet50v2_h5(path)


def test_not_hdf5_names_the_file(tmp_path):
    bad = tmp_path / "weights.h5"
    bad.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(ModelError, match="not an HDF5 file") as e:
        load_keras_resnet50v2_h5(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_hdf5_that_is_not_keras(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ModelError, match="not Keras weights"):
        load_keras_resnet50v2_h5(path)


def test_zip_that_is_not_keras(tmp_path):
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ModelError, match="not a Keras .keras archive"):
        load_keras_resnet50v2_h5(path)


def shapes(backbone_layers):
    """The backbone's layout with shapes only: tiny files (h5py allocates nothing)."""
    layers, order = backbone_layers
    return {k: [(w, v.shape) for w, v in ws] for k, ws in layers.items()}, list(order)


def test_missing_layer_names_file_and_layer(tmp_path, backbone_layers):
    layers, order = shapes(backbone_layers)
    del layers["conv3_block2_2_bn"]
    order.remove("conv3_block2_2_bn")
    path = write_legacy_h5(tmp_path / "w.h5", layers, order)
    with pytest.raises(ModelError) as e:
        load_keras_resnet50v2_h5(path)
    msg = str(e.value)
    assert str(path) in msg and "'conv3_block2_2_bn' is missing" in msg and "\n" not in msg


def test_misshapen_kernel(tmp_path, backbone_layers):
    layers, order = shapes(backbone_layers)
    layers["conv4_block1_1_conv"] = [("conv4_block1_1_conv/kernel:0", (1, 1, 512, 128))]
    path = write_legacy_h5(tmp_path / "w.h5", layers, order)
    with pytest.raises(ModelError) as e:
        load_keras_resnet50v2_h5(path)
    assert (
        "'conv4_block1_1_conv': kernel has shape (1, 1, 512, 128), expected (1, 1, 512, 256)"
        in str(e.value)
    )


def test_missing_weight_in_layer(tmp_path, backbone_layers):
    layers, order = shapes(backbone_layers)
    layers["post_bn"] = layers["post_bn"][:3]  # no moving_variance
    path = write_legacy_h5(tmp_path / "w.h5", layers, order)
    with pytest.raises(ModelError, match="'post_bn' has 3 weights, expected 4"):
        load_keras_resnet50v2_h5(path)


def test_deeper_architecture_is_refused(tmp_path, backbone_layers):
    # ResNet101V2 has every ResNet50V2 layer with the same shapes, and more: must not load.
    layers, order = shapes(backbone_layers)
    layers["conv4_block7_1_conv"] = [("conv4_block7_1_conv/kernel:0", (1, 1, 1024, 256))]
    path = write_legacy_h5(tmp_path / "w.h5", layers, [*order, "conv4_block7_1_conv"])
    with pytest.raises(ModelError, match="unexpected layer 'conv4_block7_1_conv'"):
        load_keras_resnet50v2_h5(path)


@pytest.mark.slow
def test_nested_legacy_backbone_ignores_its_surroundings(tmp_path, backbone_layers, torch_backbone):
    # Keras 2 `model.save` of the report's model: the backbone is one group whose weight names
    # ("conv1_conv/kernel:0", ...) say which layer each belongs to; the head is not ours to read.
    layers, _ = backbone_layers
    nested = {
        "resnet50v2": [w for name in layers for w in layers[name]],
        "dense": [("dense/kernel:0", (2048, 256)), ("dense/bias:0", (256,))],
    }
    path = write_legacy_h5(tmp_path / "m.h5", nested, ["input_1", "resnet50v2", "dense"])
    assert_state_equal(load_keras_resnet50v2_h5(path), torch_backbone.state_dict())


def test_weights_only_file_is_not_a_report_model(legacy_file):
    with pytest.raises(ModelError, match="weights only"):
        load_keras_report_model(legacy_file)


# --- damaged files: one ModelError naming the file, never an unexpected error ----------------


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.99])
def test_truncated_h5_is_a_model_error(legacy_file, tmp_path, keep):
    path = tmp_path / "cut.h5"
    path.write_bytes(legacy_file.read_bytes()[: int(legacy_file.stat().st_size * keep)])
    for load in (load_keras_resnet50v2_h5, load_keras_report_model):
        with pytest.raises(ModelError) as e:
            load(path)
        assert str(e.value).startswith(f"{path}: a truncated or damaged HDF5 file (")
        assert "\n" not in str(e.value)


def test_damaged_dataset_is_a_model_error_when_read(tmp_path):
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"conv1_conv"])
        group = f.create_group("conv1_conv")
        group.attrs["weight_names"] = np.array([b"conv1_conv/kernel:0"])
        kernel = np.random.default_rng(0).random((7, 7, 3, 64), dtype=np.float32)
        ds = group.create_dataset(
            "conv1_conv/kernel:0", data=kernel, chunks=True, compression="gzip"
        )
        chunk = ds.id.get_chunk_info(0)
    body = bytearray(path.read_bytes())  # opens fine; the chunk's gzip data is garbage
    body[chunk.byte_offset : chunk.byte_offset + chunk.size] = b"\xff" * chunk.size
    path.write_bytes(bytes(body))
    with pytest.raises(ModelError, match=f"^{path}: a truncated or damaged HDF5 file .*read"):
        load_keras_resnet50v2_h5(path)


@pytest.mark.parametrize(
    "config, message",
    [
        (b'{"class_name": "Functional", "con', "its model_config is not valid JSON"),
        (b"[1, 2]", "JSON but not"),
    ],
)
def test_model_config_that_is_not_a_json_object(legacy_file, tmp_path, config, message):
    path = tmp_path / "m.h5"
    path.write_bytes(legacy_file.read_bytes())
    with h5py.File(path, "a") as f:
        f.attrs["model_config"] = config
    with pytest.raises(ModelError, match=message) as e:
        load_keras_report_model(path)
    assert str(e.value).startswith(f"{path}: ")


@pytest.fixture
def keras_archive(tmp_path):
    """A .keras zip as Keras 3 writes it (members stored), holding one small layer."""
    layer = {"dense": [("kernel", np.ones((64, 32), np.float32)), ("bias", np.zeros(32))]}
    weights = write_keras3_weights_h5(tmp_path / "w.weights.h5", layer)
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", '{"keras_version": "3.5.0"}')
        z.writestr("config.json", '{"class_name": "Functional", "config": {"layers": []}}')
        z.write(weights, "model.weights.h5")
    return path


@pytest.mark.slow
def test_truncated_keras_archive_is_a_model_error(keras_archive):
    with open_keras_file(keras_archive) as (f, config):  # whole, it reads
        assert list(read_keras_layers(f, keras_archive)) == ["dense"] and config["config"]
    body = keras_archive.read_bytes()
    for keep in (0.3, 0.9, 0.999):
        keras_archive.write_bytes(body[: int(len(body) * keep)])
        with pytest.raises(ModelError) as e:
            load_keras_resnet50v2_h5(keras_archive)
        assert str(e.value).startswith(f"{keras_archive}: a truncated or damaged .keras archive")


def test_keras_archive_with_a_broken_config(keras_archive, tmp_path):
    path = tmp_path / "bad.keras"
    with zipfile.ZipFile(keras_archive) as src, zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{oops")
        z.writestr("model.weights.h5", src.read("model.weights.h5"))
    with pytest.raises(ModelError, match=f"^{path}:config.json is not valid JSON"):
        load_keras_report_model(path)


def test_cli_reports_a_damaged_file_in_one_line(legacy_file, tmp_path, capsys):
    from cifar100.cli import main

    path = tmp_path / "cut.h5"
    path.write_bytes(legacy_file.read_bytes()[:5000])
    assert main(["import-keras", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cifar100 import-keras: error: ") and err.count("\n") == 1
    assert str(path) in err and "unexpected" not in err


# --- resolving and downloading ------------------------------------------------------------------


def test_path_source(legacy_file, tmp_path):
    assert resolve_weights("resnet50v2", PUBLISHED, str(legacy_file)) == legacy_file
    missing = tmp_path / "nope.h5"
    with pytest.raises(ModelError, match="--weights none") as e:
        resolve_weights("resnet50v2", PUBLISHED, str(missing))
    assert str(missing) in str(e.value)


def test_published_file_is_the_keras_notop_one():
    wf = PUBLISHED["imagenet"]
    assert wf.origin == (
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + CANONICAL
    )
    assert wf.md5 == "fac2f116257151a9d068a22e544a4917"


@pytest.fixture
def served(legacy_file, tmp_path, monkeypatch):
    root = tmp_path / "www"
    root.mkdir()
    (root / CANONICAL).write_bytes(legacy_file.read_bytes())
    with serve_directory(root) as server:
        monkeypatch.setenv(MIRROR_ENV, server.base_url)
        yield server


def patch_md5(monkeypatch, value: str) -> None:
    wf = PUBLISHED["imagenet"]
    monkeypatch.setitem(PUBLISHED, "imagenet", dataclasses.replace(wf, md5=value))


def test_hash_mismatch_is_refused_and_leaves_nothing(served, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match="fac2f116257151a9d068a22e544a4917"):
        resolve_weights("resnet50v2", PUBLISHED, "imagenet", cache_dir=cache, progress=False)
    assert not (cache / "weights" / CANONICAL).exists()


def test_download_failure_says_what_to_do(served, tmp_path):
    served.fail[f"/{CANONICAL}"] = 404
    with pytest.raises(DownloadError) as e:
        resolve_weights("resnet50v2", PUBLISHED, "IMAGENET", cache_dir=tmp_path, progress=False)
    msg = str(e.value)
    assert "--weights /path/to/" + CANONICAL in msg and "--weights none" in msg
    assert PUBLISHED["imagenet"].origin in msg


def test_download_is_bounded_by_the_published_size(served, legacy_file, tmp_path, monkeypatch):
    small = dataclasses.replace(PUBLISHED["imagenet"], md5=md5(legacy_file), size=1000)
    monkeypatch.setitem(PUBLISHED, "imagenet", small)
    with pytest.raises(DownloadError, match="more than the 1010 expected for resnet50v2_"):
        resolve_weights(
            "resnet50v2", PUBLISHED, "imagenet", cache_dir=tmp_path / "c", progress=False
        )
    assert not list((tmp_path / "c").rglob("*.h5"))


@pytest.mark.slow
def test_build_model_downloads_once_and_loads(served, legacy_file, torch_backbone, monkeypatch):
    patch_md5(monkeypatch, md5(legacy_file))
    for _ in range(2):
        model = build_model(ModelConfig(weights="imagenet"), num_classes=10)
        assert_state_equal(model.backbone.state_dict(), torch_backbone.state_dict())
    assert served.requests[f"/{CANONICAL}"] == 1  # the second build used the verified cache


# --- against Keras (TensorFlow) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("tensorflow", reason=TF_SKIP)
    import keras

    return keras


@pytest.fixture(scope="module")
def kbackbone(keras):
    model = keras_backbone()
    randomize_keras(model, seed=0)
    return model


@pytest.fixture(scope="module")
def kfiles(kbackbone, tmp_path_factory):
    """The random Keras backbone in every layout we read."""
    root = tmp_path_factory.mktemp("keras")
    layers, order = keras_legacy_layers(kbackbone)
    files = {"legacy": write_legacy_h5(root / CANONICAL, layers, order)}
    for name in ("b.weights.h5", "b.h5", "b.keras"):
        save = kbackbone.save_weights if name.endswith(".weights.h5") else kbackbone.save
        save(root / name)
        files[name] = root / name
    return files


def nchw_to_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


@pytest.mark.slow
def test_backbone_equals_keras(kbackbone, kfiles):
    ours = ResNet50V2().eval()
    ours.load_state_dict(load_keras_resnet50v2_h5(kfiles["legacy"]), strict=True)
    torch.manual_seed(0)
    for size in [(224, 224), (75, 61)]:  # odd sizes: padding and stride alignment
        x = torch.rand(1, 3, *size) * 2 - 1  # the backbone's input range ("tf" mode)
        with torch.no_grad():
            got = ours(x).permute(0, 2, 3, 1).numpy()
        want = keras_predict(kbackbone, nchw_to_nhwc(x))
        assert got.shape == want.shape
        diff = np.abs(got - want).max()
        print(f"backbone {size}: max |diff| {diff:.2e}, max |value| {np.abs(want).max():.2f}")
        assert diff < TOL


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["b.weights.h5", "b.h5", "b.keras"])
def test_keras3_layouts_give_the_same_state(kfiles, layout):
    want = load_keras_resnet50v2_h5(kfiles["legacy"])
    assert_state_equal(load_keras_resnet50v2_h5(kfiles[layout]), want)


@pytest.mark.slow
def test_download_path_with_keras_written_file(kfiles, tmp_path, monkeypatch):
    root = tmp_path / "www"
    root.mkdir()
    (root / CANONICAL).write_bytes(kfiles["legacy"].read_bytes())
    patch_md5(monkeypatch, md5(kfiles["legacy"]))
    with serve_directory(root) as server:
        monkeypatch.setenv(MIRROR_ENV, server.base_url)
        model = build_model(ModelConfig(weights="imagenet"), num_classes=100)
    assert_state_equal(model.backbone.state_dict(), load_keras_resnet50v2_h5(kfiles["legacy"]))


def report_files(keras, kbackbone, root, seed, **kwargs):
    model = report_model(kbackbone, **kwargs)
    output = [la for la in model.layers if isinstance(la, keras.layers.Dense)][-1]
    for i, layer in enumerate(model.layers):
        if layer is not kbackbone:  # the backbone is random already; shared by the models
            # Large output weights make the probabilities peaked, not a flat 1/100 each.
            randomize_keras(layer, seed=seed + i, scale=8.0 if layer is output else 1.0)
    paths = {ext: root / f"report{seed}.{ext}" for ext in ("h5", "keras")}
    for path in paths.values():
        model.save(path)
    return model, paths


def assert_same_probabilities(kmodel, imported, num_classes: int) -> None:
    ours = build_model(imported.architecture.model_config(), num_classes)
    ours.load_state_dict(imported.state_dict, strict=True)
    ours.eval()
    torch.manual_seed(1)
    pixels = torch.randint(0, 256, (2, 3, 32, 32)).float()
    with torch.no_grad():
        got = ours.predict_proba(pixels).numpy()
    # Keras's model expects "tf"-preprocessed input (as resnet_v2.preprocess_input gives);
    # ours takes raw pixels and preprocesses inside.
    want = keras_predict(kmodel, nchw_to_nhwc(pixels / 127.5 - 1.0))
    diff = np.abs(got - want).max()
    # Log-probabilities are the logits up to a constant: they show errors that small
    # probabilities hide.
    log_diff = np.abs(np.log(got) - np.log(want)).max()
    print(
        f"report: max |prob diff| {diff:.2e}, max |log-prob diff| {log_diff:.2e}, "
        f"top probs {want.max(axis=1).round(3)}"
    )
    assert diff < TOL and log_diff < 1e-3
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.slow
def test_report_model_equals_keras(keras, kbackbone, kfiles, tmp_path):
    kmodel, paths = report_files(keras, kbackbone, tmp_path, seed=10)
    imported = load_keras_report_model(paths["h5"])
    arch = imported.architecture
    assert (arch.num_classes, arch.head_units, arch.dropout, arch.resize) == (100, 256, 0.25, 7)
    assert (arch.activation, arch.output_activation, arch.input_size) == ("relu", "softmax", 32)
    assert arch.bn_momentum == pytest.approx(0.99)
    assert_same_probabilities(kmodel, imported, 100)
    # The .keras archive holds the same model; its backbone, read alone, is the backbone.
    assert_state_equal(load_keras_report_model(paths["keras"]).state_dict, imported.state_dict)
    backbone = load_keras_resnet50v2_h5(paths["h5"])
    assert_state_equal(backbone, load_keras_resnet50v2_h5(kfiles["legacy"]))


@pytest.mark.slow
def test_sequential_leaky_report_model(keras, kbackbone, tmp_path):
    kmodel, paths = report_files(
        keras, kbackbone, tmp_path, seed=20, num_classes=10, leaky=0.1, sequential=True
    )
    imported = load_keras_report_model(paths["keras"])
    arch = imported.architecture
    assert (arch.activation, arch.output_activation, arch.num_classes) == (
        "leaky_relu",
        "softmax",
        10,
    )
    assert arch.leaky_slope == pytest.approx(0.1)
    assert_same_probabilities(kmodel, imported, 10)
    assert_state_equal(load_keras_report_model(paths["h5"]).state_dict, imported.state_dict)


def test_other_architecture_is_refused(keras, kbackbone, tmp_path):
    from keras import layers

    inputs = keras.Input((224, 224, 3))
    x = layers.GlobalAveragePooling2D()(kbackbone(inputs))
    model = keras.Model(inputs, layers.Dense(10, activation="sigmoid")(x))
    model.save(tmp_path / "other.h5")
    with pytest.raises(ModelError, match="not supported"):
        load_keras_report_model(tmp_path / "other.h5")


# --- against Keras 2 (tf_keras): the writer of the canonical file and of most trained models ----


@pytest.fixture(scope="module")
def keras2(keras):
    return pytest.importorskip("tf_keras", reason=TF_KERAS_SKIP)


@pytest.fixture(scope="module")
def k2backbone(keras2):
    model = keras_backbone(keras2)
    randomize_keras(model, seed=3)
    return model


@pytest.mark.slow
def test_keras2_save_weights_file(k2backbone, tmp_path):
    # Exactly how the canonical ImageNet file was written: Keras 2 model.save_weights("x.h5").
    path = tmp_path / CANONICAL
    k2backbone.save_weights(path)
    ours = ResNet50V2().eval()
    ours.load_state_dict(load_keras_resnet50v2_h5(path), strict=True)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        got = ours(x).permute(0, 2, 3, 1).numpy()
    diff = np.abs(got - keras_predict(k2backbone, nchw_to_nhwc(x))).max()
    print(f"Keras 2 backbone 64x64: max |diff| {diff:.2e}")
    assert diff < TOL


@pytest.mark.slow
@pytest.mark.parametrize("sequential", [False, True])
def test_keras2_report_model(keras2, k2backbone, tmp_path, sequential):
    kwargs = dict(num_classes=10, leaky=0.1, sequential=True) if sequential else {}
    kmodel = report_model(k2backbone, keras=keras2, **kwargs)
    output = [la for la in kmodel.layers if isinstance(la, keras2.layers.Dense)][-1]
    for i, layer in enumerate(kmodel.layers):
        if layer is not k2backbone:
            randomize_keras(layer, seed=30 + i, scale=8.0 if layer is output else 1.0)
    kmodel.save(tmp_path / "m.h5")
    imported = load_keras_report_model(tmp_path / "m.h5")
    arch = imported.architecture
    assert arch.activation == ("leaky_relu" if sequential else "relu")
    assert (arch.output_activation, arch.input_size, arch.resize) == ("softmax", 32, 7)
    assert_same_probabilities(kmodel, imported, arch.num_classes)


def test_the_registry_loads_resnet50v2_with_its_keras_reader():
    # The backbone registers its own weight loader, which reads Keras files.
    assert get_backbone("resnet50v2").load_weights is resnet_v2.load_resnet50v2_weights
