"""`cifar100 export` end to end: ONNX (fp32 and int8) and Triton exports of a trained run, read
back by `cifar100.load`, `predict` and `evaluate`, and refused when damaged."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cifar100
from cifar100 import cli
from cifar100.errors import CheckpointError
from cifar100.runtime.tensor_names import OUTPUTS
from tiny_run import train_tiny


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out, cache, _ = train_tiny(tmp_path_factory.mktemp("export"), 96, 64, epochs=2)
    return out, cache


@pytest.fixture(scope="module")
def onnx_file(run):
    out, cache = run
    assert cli.main(["export", str(out), "--format", "onnx", "--cache-dir", str(cache)]) == 0
    return out / "model.onnx"


@pytest.mark.slow
def test_an_onnx_export_predicts_as_the_checkpoint(run, onnx_file, capsys):
    out, cache = run
    torch_model = cifar100.load(out, device="cpu")
    onnx_model = cifar100.load(onnx_file)
    assert onnx_model.runtime == "onnx" and onnx_model.classes == torch_model.classes
    assert onnx_model.info.run == str(out)
    # The checkpoint was measured; the file is not until `evaluate` measures it (below).
    assert torch_model.test_top1 is not None and onnx_model.test_top1 is None
    images = np.random.default_rng(2).integers(0, 256, (9, 32, 32, 3), np.uint8)
    diff = np.abs(onnx_model.probabilities(images) - torch_model.probabilities(images)).max()
    assert diff < 1e-4
    assert cli.main(["evaluate", str(out), "--cache-dir", str(cache), "--json"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(onnx_file), "--cache-dir", str(cache), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runtime"] == "onnx" and result["images"] == 64
    assert result["top1"] == json.loads((out / "evaluation.json").read_text())["top1"]
    # compared with the checkpoint's own predictions, one by one
    assert result["agreement"]["differ"] == 0 and result["agreement"]["images"] == 64
    assert (out / "model.onnx.eval.json").is_file()
    assert cifar100.load(onnx_file).test_top1 == result["top1"]


def test_the_onnx_metadata_explains_the_file(onnx_file):
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert json.loads(meta["classes"])[0] == "airplane" and meta["image_size"] == "32"
    assert meta["backbone"] == "efficientnet_lite0" and meta["source_run"]
    assert len(meta["cifar100.sha256"]) == 64
    assert "test_top1" not in meta  # not measured on this file when it was written


def test_a_tampered_or_truncated_onnx_file_is_refused(onnx_file, tmp_path, capsys):
    import onnx

    model = onnx.load(str(onnx_file))
    weights = next(t for t in model.graph.initializer if len(t.raw_data) > 1000)
    raw = bytearray(weights.raw_data)
    raw[100] ^= 0x20
    weights.raw_data = bytes(raw)
    onnx.save(model, str(tmp_path / "tampered.onnx"))
    (tmp_path / "cut.onnx").write_bytes(onnx_file.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="does not match the digest"):
        cifar100.load(tmp_path / "tampered.onnx")
    for name in ("tampered", "cut"):
        capsys.readouterr()
        assert cli.main(["predict", str(tmp_path / f"{name}.onnx"), "x.png"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"{name}.onnx" in err


@pytest.mark.slow
def test_int8_needs_training_images_and_then_runs(run, tmp_path, capsys):
    out, cache = run
    target = tmp_path / "m.int8.onnx"
    argv = ["export", str(out), "--format", "onnx", "--quantize", "int8", "--out", str(target)]
    assert cli.main([*argv, "--cache-dir", str(tmp_path / "empty-cache"),
                     "--data", str(tmp_path / "missing.tar.gz")]) == 2  # fmt: skip
    assert "calibrate" in capsys.readouterr().err and not target.exists()
    assert cli.main([*argv, "--cache-dir", str(cache)]) == 0
    printed = capsys.readouterr().out
    # Its own measured agreement with the fp32 graph, and no accuracy it was not measured for.
    assert "the int8 graph vs the fp32 graph: top-1 differs on " in printed
    assert "of 64 test images" in printed and "test accuracy is not measured" in printed
    model = cifar100.load(target)
    assert model.test_top1 is None and "test accuracy not measured" in repr(model)
    probs = model.probabilities(np.zeros((2, 32, 32, 3), np.uint8))
    assert probs.shape == (2, 10) and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert not list(tmp_path.glob("*.tmp"))
    # The int8 graph keeps the four outputs, its verdict its own score against the threshold
    # (in float32, inside the graph).
    import onnxruntime as ort

    session = ort.InferenceSession(str(target))
    assert [o.name for o in session.get_outputs()] == [
        "probabilities", "logits", "ood_score", "none_of_these"
    ]  # fmt: skip
    pixels = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), np.uint8)
    _, _, score, verdict = session.run(None, {"images": pixels})
    assert (verdict == (score > np.float32(model.ood_rule.threshold))).all()


@pytest.mark.slow
def test_a_triton_repository_holds_the_same_model(run, onnx_file, tmp_path, capsys):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    out, cache = run
    repo = tmp_path / "models"
    argv = ["export", str(out), "--format", "triton", "--out", str(repo), "--name", "cifar10"]
    assert cli.main([*argv, "--cache-dir", str(cache), "--max-batch", "16"]) == 0
    config = text_format.Parse(
        (repo / "cifar10" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.name == "cifar10" and config.max_batch_size == 16
    assert [i.name for i in config.input] == ["images"]
    assert [o.name for o in config.output] == list(OUTPUTS)
    labels = (repo / "cifar10" / "labels.txt").read_text().splitlines()
    assert labels == cifar100.load(out, device="cpu").classes
    inside = cifar100.load(repo / "cifar10" / "1" / "model.onnx")
    assert inside.classes == labels
    assert cli.main(argv) == 2  # an entry that exists is not replaced without --force
    assert "force" in capsys.readouterr().err
    # --force replaces it; from the ONNX export itself, which Triton then runs as it is
    again = [
        "export",
        str(onnx_file),
        "--format",
        "triton",
        "--out",
        str(repo),
        "--name",
        "cifar10",
    ]
    assert cli.main([*again, "--force"]) == 0
    assert (repo / "cifar10" / "1" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("tmp", "."))]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["run", "onnx"])
def test_bench_times_pytorch_beside_onnx_runtime(which, run, onnx_file, capsys):
    target = run[0] if which == "run" else onnx_file
    capsys.readouterr()
    argv = ["bench", str(target), "--batch-size", "4", "--steps", "2", "--warmup", "1", "--json"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in result["rows"]] == ["pytorch", "onnxruntime"]
    assert result["rows"][0]["infer_ratio"] == 1.0 and result["rows"][1]["infer_img_s"] > 0
    assert "threads" in result["device"] and result["onnxruntime"]
