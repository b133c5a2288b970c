"""`--backbone timm:<name>`: the adapter against a stand-in timm module, and real timm if present.

timm imports torchvision, which has no build beside this torch on every machine, so the real
test skips where `import timm` fails; the stand-in checks what the adapter asks of timm.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifar100.config import ModelConfig
from cifar100.errors import ModelError
from cifar100.models.head import IMAGENET_MEAN, IMAGENET_STD
from cifar100.models.registry import build_model, get_backbone
from cifar100.models.timm_adapter import TimmBackbone, preprocess_mode


class FakeNet(nn.Module):
    """What timm.create_model(..., num_classes=0, global_pool="") returns, in miniature."""

    def __init__(self, cfg: dict, tokens: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.num_features = 8
        self.num_prefix_tokens = 1
        self.pretrained_cfg = cfg
        self.tokens = tokens

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.conv(x)))
        if self.tokens:  # a ViT's (N, 1 + L, C), with a class token first
            y = y.flatten(2).transpose(1, 2)
            return torch.cat([torch.full_like(y[:, :1], 1e3), y], dim=1)
        return y


def fake_timm(calls: list, hub_error: Exception | None = None, **cfg) -> types.ModuleType:
    cfg = {"mean": (0.5,) * 3, "std": (0.5,) * 3, "input_size": (3, 256, 256), **cfg}

    def create_model(name, pretrained=False, num_classes=1000, global_pool="avg", **kwargs):
        calls.append({"name": name, "pretrained": pretrained, "num_classes": num_classes,
                      "global_pool": global_pool, **kwargs})  # fmt: skip
        if name == "no_such_model":
            raise RuntimeError("Unknown model (no_such_model)")
        model = FakeNet(cfg, tokens=name == "vit_like")
        if pretrained:
            if hub_error is not None:
                raise hub_error
            for p in model.parameters():  # "ImageNet weights": recognisable values
                nn.init.constant_(p, 0.5)
        return model

    module = types.ModuleType("timm")
    module.create_model = create_model
    return module


@pytest.fixture
def calls(monkeypatch) -> list:
    calls: list = []
    monkeypatch.setitem(sys.modules, "timm", fake_timm(calls))
    return calls


def train_one_step(model: nn.Module) -> None:
    model.train()
    before = [p.detach().clone() for p in model.backbone.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randint(0, 256, (4, 3, 32, 32)).float(), torch.tensor([0, 1, 2, 3])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    after = list(model.backbone.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


def test_spec_comes_from_the_model_and_its_pretrained_cfg(calls):
    spec = get_backbone("timm:fake_net.some_tag")
    assert (spec.out_features, spec.native_size, spec.preprocessing) == (8, 256, "tf")
    assert set(spec.weight_sources) == {"imagenet", "none"}
    first = calls[0]
    assert (first["name"], first["pretrained"], first["num_classes"], first["global_pool"]) == (
        "fake_net.some_tag",
        False,
        0,
        "",
    )


def test_builds_as_a_backbone_and_trains_one_step(calls):
    model = build_model(ModelConfig(backbone="timm:fake_net", weights="none", resize=1), 10)
    assert isinstance(model.backbone, TimmBackbone) and model.preprocess.mode == "tf"
    assert not any(c["pretrained"] for c in calls)
    with torch.no_grad():
        assert model.backbone(torch.zeros(2, 3, 32, 32)).shape == (2, 8, 16, 16)
    train_one_step(model)


def test_imagenet_weights_are_timms_pretrained_ones(calls, tmp_path):
    model = build_model(ModelConfig(backbone="timm:fake_net", weights="imagenet"), 10)
    assert calls[-1]["pretrained"] is True and "pretrained_cfg_overlay" not in calls[-1]
    assert torch.all(model.backbone.model.conv.weight == 0.5)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    build_model(ModelConfig(backbone="timm:fake_net", weights=str(weights)), 10)
    assert calls[-1]["pretrained_cfg_overlay"] == {"file": str(weights)}
    with pytest.raises(ModelError, match="no such weights file"):
        build_model(ModelConfig(backbone="timm:fake_net", weights=str(tmp_path / "nope")), 10)


def test_unreachable_hub_is_one_clear_error(monkeypatch):
    error = OSError("We couldn't connect to 'https://huggingface.co'\nmore detail")
    monkeypatch.setitem(sys.modules, "timm", fake_timm([], hub_error=error))
    with pytest.raises(ModelError) as err:
        build_model(ModelConfig(backbone="timm:fake_net", weights="imagenet"), 10)
    message = str(err.value)
    assert "could not load pretrained weights" in message and "--weights none" in message
    assert "\n" not in message


def test_transformer_tokens_become_a_pooled_map(calls):
    backbone = TimmBackbone("vit_like")
    y = backbone(torch.zeros(2, 3, 32, 32))
    assert y.shape == (2, 8, 256, 1)  # 16 x 16 patches; the class token dropped
    assert y.max() < 1e3


def test_preprocessing_modes():
    assert preprocess_mode(IMAGENET_MEAN, IMAGENET_STD) == ("torch", True)
    assert preprocess_mode((0.5,) * 3, (0.5,) * 3) == ("tf", True)
    assert preprocess_mode((0.0,) * 3, (1.0,) * 3) == ("none", True)
    clip = ((0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758))
    assert preprocess_mode(*clip) == ("torch", False)


def test_inexact_normalisation_warns(monkeypatch):
    clip = {"mean": (0.4815, 0.4578, 0.4082), "std": (0.2686, 0.2613, 0.2758)}
    monkeypatch.setitem(sys.modules, "timm", fake_timm([], **clip))
    with pytest.warns(UserWarning, match="no preprocessing mode"):
        assert get_backbone("timm:clip_like").preprocessing == "torch"


def test_unknown_model_and_absent_timm(calls, monkeypatch):
    with pytest.raises(ModelError, match="timm:no_such_model: Unknown model"):
        get_backbone("timm:no_such_model")
    with pytest.raises(ModelError, match="needs a model name"):
        get_backbone("timm:")
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ModelError, match="pip install timm"):
        get_backbone("timm:resnet18")


def test_real_timm_resnet18():
    try:
        import timm  # noqa: F401
    except ImportError as e:
        pytest.skip(f"timm does not import here ({e}); pip install timm")
    spec = get_backbone("timm:resnet18")
    assert (spec.out_features, spec.native_size, spec.preprocessing) == (512, 224, "torch")
    model = build_model(ModelConfig(backbone="timm:resnet18", weights="none", resize=1), 10)
    train_one_step(model)
