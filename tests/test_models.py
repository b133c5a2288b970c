"""ResNet50V2 backbone, the report's classifier, the registry and the Keras-style summary."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifar100.config import ModelConfig
from cifar100.errors import CifarError, ModelError
from cifar100.models import (
    BACKBONES,
    Classifier,
    Preprocess,
    ResNet50V2,
    Upsample,
    build_model,
    format_summary,
    keras_param_count,
    summary_rows,
)


def random_cfg(**kw) -> ModelConfig:
    return ModelConfig(weights="none", **kw)


def pixels(n: int, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size)).float()


@pytest.fixture(scope="module")
def model() -> Classifier:
    torch.manual_seed(0)
    return build_model(random_cfg(), num_classes=100).eval()


@pytest.fixture(scope="module")
def backbone() -> ResNet50V2:
    torch.manual_seed(0)
    return ResNet50V2().eval()


# --- shapes -------------------------------------------------------------------------------------


def test_resize7_shapes(model: Classifier) -> None:
    x = pixels(2)
    with torch.no_grad():
        up = model.upsample(model.preprocess(x))
        fmap = model.backbone(up)
        logits = model(x)
    assert up.shape == (2, 3, 224, 224)
    assert fmap.shape == (2, 2048, 7, 7)
    assert logits.shape == (2, 100)


def test_resize1_shapes() -> None:
    m = build_model(random_cfg(resize=1), num_classes=10).eval()
    assert isinstance(m.upsample, nn.Identity)
    with torch.no_grad():
        assert m.backbone(pixels(2)).shape == (2, 2048, 1, 1)
        assert m(pixels(2)).shape == (2, 10)


@pytest.mark.parametrize("size,out", [(33, 2), (50, 2), (97, 4)])
def test_arbitrary_input_sizes(backbone: ResNet50V2, size: int, out: int) -> None:
    # Odd sizes: the subsampled identity shortcut and the strided conv must agree (ceil(h/2)).
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, size, size)).shape == (1, 2048, out, out)


def test_stride_is_on_the_last_block_of_each_stack(backbone: ResNet50V2) -> None:
    # Keras stack_residual_blocks_v2 strides the last block: conv2_block3_out is 28x28 at 224.
    expected = {
        "conv2_block1": (256, 56),
        "conv2_block2": (256, 56),
        "conv2_block3": (256, 28),
        "conv3_block3": (512, 28),
        "conv3_block4": (512, 14),
        "conv4_block5": (1024, 14),
        "conv4_block6": (1024, 7),
        "conv5_block3": (2048, 7),
    }
    seen: dict[str, tuple[int, int]] = {}
    handles = [
        backbone.get_submodule(name).register_forward_hook(
            lambda _m, _i, o, name=name: seen.__setitem__(name, (o.shape[1], o.shape[2]))
        )
        for name in expected
    ]
    try:
        with torch.no_grad():
            x = torch.randn(1, 3, 224, 224)
            assert backbone.stem(x).shape == (1, 64, 56, 56)
            assert backbone(x).shape == (1, 2048, 7, 7)
    finally:
        for h in handles:
            h.remove()
    assert seen == expected


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(1)
    net = ResNet50V2().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        net = net.to(memory_format=torch.channels_last)
        out = net(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


# --- Keras equality details ---------------------------------------------------------------------


def test_parameter_counts(model: Classifier) -> None:
    assert keras_param_count(model.backbone) == (23_564_800, 23_519_360)
    assert keras_param_count(model.head.dense)[0] == 524_544
    assert keras_param_count(model.head.batch_normalization) == (1_024, 512)
    assert keras_param_count(model.head.dense_1)[0] == 25_700
    assert keras_param_count(model) == (24_116_068, 24_116_068 - 45_440 - 512)


def test_parameter_counts_follow_num_classes() -> None:
    m = build_model(random_cfg(), num_classes=10)
    assert keras_param_count(m.head.dense_1)[0] == 2_570


def test_frozen_backbone_counts_as_non_trainable() -> None:
    m = build_model(random_cfg(), num_classes=100)
    m.backbone.requires_grad_(False)
    assert keras_param_count(m.backbone) == (23_564_800, 0)
    assert keras_param_count(m)[1] == 524_544 + 512 + 25_700


def test_batch_norm_settings(model: Classifier) -> None:
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 16 * 3 + 1  # preact, 1_bn, 2_bn per block; post_bn
    assert all(bn.eps == 1.001e-5 and bn.momentum == 0.01 for bn in bns)
    head_bn = model.head.batch_normalization
    assert (head_bn.eps, head_bn.momentum) == (1e-3, 0.01)


def test_stem_max_pool_pads_with_zeros() -> None:
    # A stem output of -1 everywhere: Keras's zero padding makes the border windows 0, where
    # torch's MaxPool2d(padding=1) (-inf padding) would give -1.
    net = ResNet50V2()
    with torch.no_grad():
        net.conv1_conv.weight.zero_()
        net.conv1_conv.bias.fill_(-1.0)
        out = net.stem(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 64, 8, 8)
    assert (out[:, :, 0, :] == 0).all() and (out[:, :, :, 0] == 0).all()
    assert (out[:, :, 1:, 1:] == -1).all()


def test_keras_layer_names_cover_every_weight(backbone: ResNet50V2) -> None:
    names = backbone.keras_layer_names()
    # conv1_conv + 16 blocks x 6 layers + 4 shortcut convs + post_bn
    assert len(names) == len(set(names.values())) == 102
    assert names["conv2_block1.shortcut"] == "conv2_block1_0_conv"
    assert names["conv4_block6.bn2"] == "conv4_block6_2_bn"
    assert "conv2_block2.shortcut" not in names
    owners = {k.rsplit(".", 1)[0] for k in backbone.state_dict()}
    assert owners == set(names)


def test_shortcuts_and_biases_match_keras(backbone: ResNet50V2) -> None:
    b1, b2 = backbone.conv3_block1, backbone.conv3_block4
    assert b1.shortcut is not None and b1.shortcut.bias is not None
    assert b1.conv1.bias is None and b1.conv2.bias is None and b1.conv3.bias is not None
    assert b2.shortcut is None and b2.conv2.stride == (2, 2)
    assert backbone.conv1_conv.bias is not None
    with torch.no_grad():
        # block1 keeps the size (conv shortcut); the last block strides its identity shortcut.
        assert b1(torch.randn(1, 256, 28, 28)).shape == (1, 512, 28, 28)
        assert b2(torch.randn(1, 512, 28, 28)).shape == (1, 512, 14, 14)


# --- head and classifier ------------------------------------------------------------------------


def test_upsampling_is_half_pixel_bilinear() -> None:
    x = torch.tensor([[0.0, 4.0], [8.0, 12.0]]).view(1, 1, 2, 2)
    # Source coordinates (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped at the edges.
    expected = torch.tensor(
        [[0.0, 1.0, 3.0, 4.0], [2.0, 3.0, 5.0, 6.0], [6.0, 7.0, 9.0, 10.0], [8.0, 9.0, 11.0, 12.0]]
    )
    torch.testing.assert_close(Upsample(2)(x)[0, 0], expected)
    y = torch.randn(2, 3, 32, 32)
    ref = F.interpolate(y, scale_factor=7, mode="bilinear", align_corners=False, antialias=False)
    torch.testing.assert_close(Upsample(7)(y), ref)


def test_preprocess_modes() -> None:
    x = torch.tensor([0.0, 127.5, 255.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    torch.testing.assert_close(Preprocess("tf")(x)[0, 0, 0], torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(Preprocess("none")(x)[0, 0, 0], torch.tensor([0.0, 0.5, 1.0]))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(Preprocess("torch")(x)[0, :, 0, 0], -mean / std)
    assert Preprocess("tf").mode == "tf"
    assert "mean" not in Preprocess("torch").state_dict()
    with pytest.raises(ModelError):
        Preprocess("caffe")


def test_forward_backward_gives_finite_gradients() -> None:
    torch.manual_seed(0)
    m = build_model(random_cfg(resize=1), num_classes=10).train()
    loss = F.cross_entropy(m(pixels(4)), torch.randint(0, 10, (4,)))
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert torch.isfinite(loss)


@pytest.mark.slow
def test_leaky_relu_option_changes_the_activation() -> None:
    torch.manual_seed(0)
    relu = build_model(random_cfg(resize=1), num_classes=10).eval()
    leaky = build_model(random_cfg(resize=1, activation="leaky_relu", leaky_slope=0.2), 10).eval()
    assert isinstance(relu.head.activation, nn.ReLU)
    assert isinstance(leaky.head.activation, nn.LeakyReLU)
    assert leaky.head.activation.negative_slope == 0.2
    leaky.load_state_dict(relu.state_dict())
    x = pixels(4)
    with torch.no_grad():
        assert not torch.allclose(relu(x), leaky(x))
    with pytest.raises(ModelError):
        build_model(random_cfg(activation="gelu"), 10)


def test_head_init_is_glorot_with_zero_bias(model: Classifier) -> None:
    dense = model.head.dense
    limit = (6 / (2048 + 256)) ** 0.5
    assert dense.weight.abs().max() <= limit and dense.bias.abs().sum() == 0


def test_predict_proba_rows_sum_to_one(model: Classifier) -> None:
    with torch.no_grad():
        p = model.predict_proba(pixels(3))
    assert p.shape == (3, 100) and (p >= 0).all()
    torch.testing.assert_close(p.sum(dim=1), torch.ones(3))


def test_head_trains_alone_on_a_frozen_backbone() -> None:
    m = build_model(random_cfg(resize=1), num_classes=10)
    m.backbone.requires_grad_(False).eval()
    m.head.train()
    loss = F.cross_entropy(m(pixels(4)), torch.randint(0, 10, (4,)))
    loss.backward()
    assert all(p.grad is None for p in m.backbone.parameters())
    assert all(p.grad is not None for p in m.head.parameters())


# --- summary ------------------------------------------------------------------------------------


def test_format_summary_matches_the_report(model: Classifier) -> None:
    text = format_summary(model, 32)
    for needle in [
        "23,564,800",
        "524,544",
        "1,024",
        "25,700",
        "24,116,068",
        "(None, 224, 224, 3)",
        "(None, 7, 7, 2048)",
        "(None, 100)",
        "Non-trainable params: 45,952",
    ]:
        assert needle in text, needle
    rows = summary_rows(model, 32)
    assert [r.name for r in rows] == [
        "input_layer",
        "up_sampling2d",
        "resnet50v2",
        "global_average_pooling2d",
        "dropout",
        "dense",
        "batch_normalization",
        "dense_1",
    ]
    assert sum(r.params for r in rows) == 24_116_068
    assert not model.training  # the summary's forward pass restores each module's mode


def test_summary_follows_the_config() -> None:
    m = build_model(random_cfg(resize=1), num_classes=10).train()
    rows = {r.name: r for r in summary_rows(m, 32)}
    assert "up_sampling2d" not in rows
    assert rows["resnet50v2"].output_shape == "(None, 1, 1, 2048)"
    assert (rows["dense_1"].output_shape, rows["dense_1"].params) == ("(None, 10)", 2_570)
    assert all(mod.training for mod in m.modules())


# --- registry -----------------------------------------------------------------------------------


def test_registry_spec() -> None:
    spec = BACKBONES["resnet50v2"]
    assert (spec.out_features, spec.native_size, spec.preprocessing) == (2048, 224, "tf")
    assert set(spec.weight_sources) == {"imagenet", "none"}
    assert build_model(random_cfg(), 100).preprocess.mode == "tf"


def test_unknown_backbone_names_the_known_ones() -> None:
    with pytest.raises(ModelError, match="resnet50v2"):
        build_model(random_cfg(backbone="vgg16"), 100)


@pytest.mark.parametrize("weights", ["imagenet", "/nonexistent/some_weights.h5"])
def test_unavailable_weights_say_what_to_do_in_one_line(weights: str) -> None:
    # conftest points the weights mirror at a closed local port, so "imagenet" cannot download.
    with pytest.raises(CifarError, match="--weights") as info:
        build_model(ModelConfig(weights=weights), 100)
    assert "\n" not in str(info.value)


def test_bn_momentum_follows_the_keras_convention():
    from cifar100.config import ModelConfig
    from cifar100.models.registry import build_model

    bns = [
        m
        for m in build_model(ModelConfig(weights="none", bn_momentum=0.9), 10).modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    assert len(bns) == 50 and all(abs(m.momentum - 0.1) < 1e-9 for m in bns)
