"""Issue 20 in the exports: an ONNX graph (and its Triton repository) and a Keras file that
compute the calibrated probabilities, the OOD score and the "none of these" verdict themselves,
checked with ONNX Runtime alone and Keras alone against `cifar100.load(checkpoint).scores`."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import cifar100
from cifar100.export.formats import export_model
from cifar100.export.triton_repo import write_triton_repository
from cifar100.runtime.checkpoint import Checkpoint
from cifar100.runtime.ood_rule import OodRule
from cifar100.runtime.trust import entropy, score_logits
from test_export_keras import report_classifier  # and so keras_oracle: the TF backend

TEMPERATURE = 1.7  # not 1: calibrated and raw probabilities differ
GAP = 1e-4  # no image's score is nearer the threshold than this: the verdicts are clear-cut


def trust_images(n: int = 24, size: int = 32) -> np.ndarray:
    """Noise, flat colours and stripes: images whose scores spread, so a threshold splits them."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (n // 3, size, size, 3), dtype=np.uint8)
    flat = np.broadcast_to(
        rng.integers(0, 256, (n // 3, 1, 1, 3), dtype=np.uint8), (n // 3, size, size, 3)
    )
    stripes = np.zeros((n - 2 * (n // 3), size, size, 3), np.uint8)
    for i, image in enumerate(stripes):
        image[:: 2 + i % 4] = rng.integers(0, 256, 3, dtype=np.uint8)
    return np.ascontiguousarray(np.concatenate([noise, flat, stripes]))


def splitting_threshold(scores: np.ndarray) -> float:
    """A threshold between two middle scores, at least GAP from every score."""
    ordered = np.sort(scores.astype(np.float64))
    gaps = np.diff(ordered)
    middle = np.arange(len(gaps))
    usable = (gaps > 2 * GAP) & (abs(middle - len(gaps) / 2) < len(gaps) / 4)
    assert usable.any(), f"no gap of {2 * GAP} among the middle scores {ordered}"
    i = int(np.flatnonzero(usable)[np.argmax(gaps[usable])])
    return round(float(ordered[i] + ordered[i + 1]) / 2, 6)


def onnx_outputs(path, images: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX Runtime alone: every output of the graph, by name."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": images})))


@pytest.fixture(scope="module")
def trusted(tiny_run_copy, tmp_path_factory):
    """The tiny run's checkpoint with a temperature and a rule that splits trust_images in
    two, then exported to ONNX: (checkpoint, ONNX file, images, threshold)."""
    root = tmp_path_factory.mktemp("trust")
    images = trust_images()
    checkpoint = Checkpoint.load(tiny_run_copy / "last.pt")
    logits = cifar100.load(tiny_run_copy / "last.pt", device="cpu").logits(images)
    threshold = splitting_threshold(entropy(logits).numpy())
    checkpoint.info.temperature = TEMPERATURE
    checkpoint.info.ood = OodRule(threshold, images=len(images)).to_json()
    checkpoint.save(root / "trusted.pt")
    model = cifar100.load(root / "trusted.pt", device="cpu")
    export_model(model, "onnx", root / "model.onnx", images=(images, images))
    return root / "trusted.pt", root / "model.onnx", images, threshold


@pytest.mark.slow
def test_onnx_runtime_alone_gives_the_checkpoints_scores(trusted):
    checkpoint, path, images, threshold = trusted
    model = cifar100.load(checkpoint, device="cpu")
    logits = model.logits(images)
    want = model.scores(logits)
    got = onnx_outputs(path, images)
    assert list(got) == ["probabilities", "logits", "ood_score", "none_of_these"]
    assert got["none_of_these"].dtype == np.bool_ and got["ood_score"].shape == (len(images),)
    np.testing.assert_allclose(got["logits"], logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(got["probabilities"], want.probabilities.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["ood_score"], want.ood_score.numpy(), atol=1e-5)
    assert (got["none_of_these"] == want.none_of_these.numpy()).all()
    assert 0 < got["none_of_these"].sum() < len(images)  # the threshold splits them
    # Calibrated, not the raw softmax: the temperature is in the graph.
    raw = torch.softmax(logits, -1).numpy()
    assert np.abs(got["probabilities"] - raw).max() > 100 * 1e-5
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert float(meta["temperature"]) == TEMPERATURE
    assert float(meta["ood_threshold"]) == threshold


@pytest.mark.slow
def test_the_onnx_file_loads_and_predicts_as_its_checkpoint(trusted):
    checkpoint, path, images, _ = trusted
    ours, theirs = cifar100.load(checkpoint, device="cpu"), cifar100.load(path)
    assert theirs.runtime == "onnx"
    assert (theirs.temperature, theirs.ood_rule) == (ours.temperature, ours.ood_rule)
    for a, b in zip(ours.predict(images, k=1), theirs.predict(images, k=1)):
        assert a.top[0][0] == b.top[0][0] and a.top[0][1] == pytest.approx(b.top[0][1], abs=1e-5)
        assert a.ood_score == pytest.approx(b.ood_score, abs=1e-5)
        assert a.none_of_these == b.none_of_these is not None


@pytest.mark.slow
def test_triton_declares_the_four_outputs(trusted, tmp_path):
    from google.protobuf import text_format

    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    _, path, _, _ = trusted
    classes = cifar100.load(path).classes
    entry = write_triton_repository(path, tmp_path, "cifar10", classes)
    config = text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    declared = [
        (o.name, model_config_pb2.DataType.Name(o.data_type), list(o.dims)) for o in config.output
    ]
    assert declared == [
        ("probabilities", "TYPE_FP32", [10]),
        ("logits", "TYPE_FP32", [10]),
        ("ood_score", "TYPE_FP32", [1]),
        ("none_of_these", "TYPE_BOOL", [1]),
    ]
    assert [o.HasField("reshape") for o in config.output] == [False, False, True, True]


@pytest.mark.slow
def test_a_model_without_temperature_or_rule_exports_and_loads(trusted, tmp_path):
    checkpoint, _, images, _ = trusted
    old = Checkpoint.load(checkpoint)
    old.info.temperature, old.info.ood = None, None  # as saved before issue 20
    old.save(tmp_path / "old.pt")
    model = cifar100.load(tmp_path / "old.pt", device="cpu")
    export_model(model, "onnx", tmp_path / "old.onnx", images=(images, images))
    got = onnx_outputs(tmp_path / "old.onnx", images)
    logits = model.logits(images)
    np.testing.assert_allclose(got["probabilities"], torch.softmax(logits, -1), atol=1e-5)
    np.testing.assert_allclose(got["ood_score"], entropy(logits), atol=1e-5)
    assert not got["none_of_these"].any()  # no rule: never "none of these"
    assert "always false" in onnx.load(str(tmp_path / "old.onnx")).doc_string
    loaded = cifar100.load(tmp_path / "old.onnx")
    assert loaded.temperature is None and loaded.ood_rule is None
    prediction = loaded.predict(images[:2])[0]
    assert prediction.ood_score is None and prediction.none_of_these is None


# --- Keras alone ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("tensorflow", reason="TensorFlow is a test-only oracle")
    import keras  # its backend: TensorFlow, as keras_oracle (imported above) sets it

    return keras


@pytest.fixture(scope="module")
def report_model():
    """The report's architecture (the one a Keras export takes), random weights, at 32 px."""
    model, cfg = report_classifier(resize=1, seed=3)
    return model, cfg


def torch_logits(model, images: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.from_numpy(images).permute(0, 3, 1, 2).float())


@pytest.mark.slow
@pytest.mark.parametrize("with_rule", [True, False])
def test_keras_alone_gives_the_scores_and_verdict(keras, report_model, tmp_path, with_rule):
    from cifar100.export.keras_file import write_keras_model

    model, cfg = report_model
    images = trust_images(12)
    logits = torch_logits(model, images)
    rule = OodRule(splitting_threshold(entropy(logits).numpy())) if with_rule else None
    temperature = TEMPERATURE if with_rule else None
    path = tmp_path / "model.keras"
    write_keras_model(model, cfg, 32, path, temperature=temperature, rule=rule)
    # What a Keras user does: no cifar100 code, no custom objects, safe_mode as it comes.
    got = keras.saving.load_model(path).predict(images.astype(np.float32), verbose=0)
    got = {name: np.asarray(value) for name, value in got.items()}
    want = score_logits(logits, temperature, rule)
    assert sorted(got) == ["logits", "none_of_these", "ood_score", "probabilities"]
    assert got["ood_score"].shape == got["none_of_these"].shape == (len(images),)
    np.testing.assert_allclose(got["logits"], logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(got["probabilities"], want.probabilities.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["ood_score"], want.ood_score.numpy(), atol=1e-5)
    verdict = got["none_of_these"]
    assert set(np.unique(verdict)) <= {0.0, 1.0}  # a step, not a slope: exactly 0 or 1
    assert (verdict == want.none_of_these.numpy()).all()
    if with_rule:
        assert 0 < verdict.sum() < len(images)
        assert (verdict == (got["ood_score"] > np.float32(rule.threshold))).all()
