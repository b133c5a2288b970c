"""write_triton_repository: a model repository entry that Triton's own schema accepts, read
from the ONNX graph, written whole or not at all."""

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from onnx import TensorProto, helper
from torch import nn

from cifar100.errors import ModelError, WriteError
from cifar100.export import triton_repo
from cifar100.export.onnx_file import export_onnx
from cifar100.export.triton_repo import write_triton_repository
from cifar100.models.head import Classifier

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed"
)

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class TinyBackbone(nn.Sequential):
    """A Classifier backbone that exports in a second or two."""

    out_features = 8

    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    torch.manual_seed(0)
    model = Classifier(TinyBackbone(), len(CLASSES), resize=2, head_units=16).eval()
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    export_onnx(model, 32, {"classes": ",".join(CLASSES)}, path, images(4))
    return path


def parse_config(entry) -> "model_config_pb2.ModelConfig":
    # Strict: a field Triton's schema does not have is a ParseError.
    return text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


@pytest.mark.slow
def test_config_follows_tritons_schema_and_the_onnx_graph(onnx_path, tmp_path):
    entry = write_triton_repository(onnx_path, tmp_path, "cifar10-lite", CLASSES, max_batch=32)
    assert entry == tmp_path / "cifar10-lite"
    config = parse_config(entry)
    assert config.name == "cifar10-lite"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32
    assert config.dynamic_batching.max_queue_delay_microseconds == triton_repo.QUEUE_DELAY_US
    graph = onnx.load(onnx_path).graph
    onnx_to_triton = {TensorProto.UINT8: model_config_pb2.TYPE_UINT8}
    onnx_to_triton[TensorProto.FLOAT] = model_config_pb2.TYPE_FP32
    onnx_to_triton[TensorProto.BOOL] = model_config_pb2.TYPE_BOOL
    for ours, theirs in [(config.input, graph.input), (config.output, graph.output)]:
        assert [t.name for t in ours] == [v.name for v in theirs]
        for tensor, value in zip(ours, theirs):
            assert tensor.data_type == onnx_to_triton[value.type.tensor_type.elem_type]
            # Without the batch axis: max_batch_size > 0 makes Triton add it; a (batch,) tensor
            # is Triton's [1] reshaped to [].
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim[1:]]
            assert list(tensor.dims) == (dims or [1]) and list(tensor.reshape.shape) == []
            assert tensor.HasField("reshape") == (not dims)
    assert [(t.name, list(t.dims)) for t in config.input] == [("images", [32, 32, 3])]
    assert config.input[0].format == model_config_pb2.ModelInput.FORMAT_NHWC
    assert [(t.name, list(t.dims), t.label_filename) for t in config.output] == [
        ("probabilities", [10], "labels.txt"),
        ("logits", [10], "labels.txt"),
        ("ood_score", [1], ""),
        ("none_of_these", [1], ""),
    ]


def test_labels_and_model_file(onnx_path, tmp_path):
    entry = write_triton_repository(onnx_path, tmp_path, "m", CLASSES, version=3)
    assert sorted(str(p.relative_to(entry)) for p in entry.rglob("*")) == [
        "3",
        "3/model.onnx",
        "config.pbtxt",
        "labels.txt",
    ]
    assert (entry / "labels.txt").read_text().splitlines() == CLASSES
    assert (entry / "3" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    session = ort.InferenceSession(str(entry / "3/model.onnx"), providers=["CPUExecutionProvider"])
    probabilities, logits = session.run(["probabilities", "logits"], {"images": images(3)})
    assert probabilities.shape == logits.shape == (3, len(CLASSES))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary directory left


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", ".hidden", "with space", "ü", "x" * 129])
def test_names_triton_would_not_take_are_refused(onnx_path, tmp_path, name):
    with pytest.raises(ModelError, match="Triton model name"):
        write_triton_repository(onnx_path, tmp_path, name, CLASSES)
    assert list(tmp_path.iterdir()) == []


def test_a_graph_with_a_fixed_batch_is_refused(tmp_path):
    fixed = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["images"], ["probabilities"])],
            "fixed",
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, [4, 10])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [4, 10])],
        )
    )
    onnx.save(fixed, tmp_path / "fixed.onnx")
    with pytest.raises(ModelError, match=r"'images' has a fixed batch size \(4\)"):
        write_triton_repository(tmp_path / "fixed.onnx", tmp_path / "repo", "m", CLASSES)
    assert not (tmp_path / "repo").exists()


def test_classes_must_match_the_outputs(onnx_path, tmp_path):
    with pytest.raises(ModelError, match="no output has one score per class .9 class names"):
        write_triton_repository(onnx_path, tmp_path, "m", CLASSES[:9])
    with pytest.raises(ModelError, match=r"class 10 of 10, 'two\\nlines', holds \\n, which"):
        write_triton_repository(onnx_path, tmp_path, "m", [*CLASSES[:9], "two\nlines"])


def test_not_an_onnx_file_is_one_error(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelError, match="cannot read ONNX model"):
        write_triton_repository(tmp_path / "model.onnx", tmp_path / "repo", "m", CLASSES)


def test_an_existing_entry_is_kept_unless_forced(onnx_path, tmp_path):
    entry = tmp_path / "m"
    (entry / "1").mkdir(parents=True)
    (entry / "1" / "model.onnx").write_bytes(b"the model already served")
    with pytest.raises(ModelError, match="already holds a model.*--force"):
        write_triton_repository(onnx_path, tmp_path, "m", CLASSES)
    assert (entry / "1" / "model.onnx").read_bytes() == b"the model already served"
    write_triton_repository(onnx_path, tmp_path, "m", CLASSES, force=True)
    assert (entry / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_an_empty_directory_is_filled(onnx_path, tmp_path):
    (tmp_path / "m").mkdir()
    write_triton_repository(onnx_path, tmp_path, "m", CLASSES)
    assert parse_config(tmp_path / "m").name == "m"


def test_a_failed_write_leaves_nothing_and_keeps_the_old_entry(onnx_path, tmp_path, monkeypatch):
    write_triton_repository(onnx_path, tmp_path, "m", CLASSES)
    before = (tmp_path / "m" / "config.pbtxt").read_text()

    def disk_full(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(shutil, "copyfile", disk_full)
    with pytest.raises(WriteError, match="Triton model repository"):
        write_triton_repository(onnx_path, tmp_path, "m", CLASSES[::-1], force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    assert (tmp_path / "m" / "config.pbtxt").read_text() == before
    assert (tmp_path / "m" / "labels.txt").read_text().splitlines() == CLASSES


@pytest.mark.parametrize(
    "option, message", [({"max_batch": 0}, "max_batch"), ({"version": 0}, "version")]
)
def test_batch_and_version_must_be_positive(onnx_path, tmp_path, option, message):
    with pytest.raises(ModelError, match=message):
        write_triton_repository(onnx_path, tmp_path, "m", CLASSES, **option)
