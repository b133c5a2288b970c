"""docs/development.md's two worked examples, run as written: a backbone registered from one
file trains through `cifar100 train` and exports; an export format registered from one entry
writes a model and `cifar100.load` reads it back."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import cifar100
from cifar100 import cli
from cifar100.errors import CheckpointError
from cifar100.export.formats import FORMATS, export_model
from cifar100.models.registry import BACKBONES, describe_backbones
from cifar100.runtime.model_files import READERS
from synthetic_cifar import make_cifar10_archive

DEVELOPMENT = Path(__file__).resolve().parents[1] / "docs" / "development.md"


def section_code(heading: str) -> str:
    """The one ```python block of the section `heading` of docs/development.md."""
    text = DEVELOPMENT.read_text(encoding="utf-8")
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + len(heading) + 2)
    (code,) = re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)
    return code


def import_file(path: Path):
    """Import the module at `path` as a user's own code would be: registering what it does."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """The documented backbone, from its one file, trained for an epoch by `cifar100 train`."""
    root = tmp_path_factory.mktemp("extending")
    path = root / "tiny_convnet.py"
    path.write_text(section_code("## How to add a backbone"), encoding="utf-8")
    import_file(path)
    try:
        archive = make_cifar10_archive(root / "c10.tar.gz", 64, 32)
        run, cache = root / "run", root / "cache"
        argv = ["train", "--preset", "scratch", "--dataset", "cifar10", "--data", str(archive),
                "--backbone", "tiny_convnet", "--epochs", "1", "--set", "train.batch_size=32",
                "--out", str(run), "--no-progress", "--cache-dir", str(cache)]  # fmt: skip
        assert cli.main(argv) == 0
        yield run, cache
    finally:
        BACKBONES.pop("tiny_convnet", None)
        sys.modules.pop("tiny_convnet", None)


def test_a_backbone_from_one_file_trains_and_exports(toy_run, tmp_path, capsys):
    run, cache = toy_run
    assert "tiny_convnet" in {row["name"] for row in describe_backbones()}
    model = cifar100.load(run)
    assert model.backbone == "tiny_convnet" and model.preprocessing == "torch"
    assert type(model.module.backbone).__name__ == "TinyConvNet"
    out = tmp_path / "toy.safetensors"
    argv = ["export", str(run), "--format", "safetensors", "--out", str(out)]
    assert cli.main([*argv, "--cache-dir", str(cache)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8)
    again = cifar100.load(out)
    np.testing.assert_allclose(again.probabilities(images), model.probabilities(images), atol=1e-6)


@pytest.fixture
def npz_format(tmp_path):
    """The documented export format, from its one module (its entry registers it)."""
    path = tmp_path / "npz_format.py"
    path.write_text(section_code("## How to add an export format"), encoding="utf-8")
    try:
        yield import_file(path)
    finally:
        FORMATS.pop("npz", None)
        READERS.pop(".npz", None)
        sys.modules.pop("npz_format", None)


def test_an_export_format_from_one_entry_writes_and_reads_back(toy_run, npz_format, tmp_path):
    run, _ = toy_run
    assert "npz" in FORMATS and READERS[".npz"] is npz_format.read_npz
    model = cifar100.load(run)
    result = export_model(model, "npz", tmp_path / "model.npz")
    assert result.path == tmp_path / "model.npz" and result.details["tensors"] > 0
    again = cifar100.load(result.path)
    assert (again.classes, again.image_size, again.backbone) == (model.classes, 32, "tiny_convnet")
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), np.uint8)
    np.testing.assert_allclose(again.probabilities(images), model.probabilities(images), atol=1e-6)
    # The default output follows the entry's suffix; a damaged file is refused on load.
    assert export_model(model, "npz").path == run / "model.npz"
    with np.load(result.path) as z:
        arrays = dict(z)
    first = next(k for k in arrays if k.endswith("weight"))
    arrays[first] = arrays[first] + 1
    np.savez(tmp_path / "damaged.npz", **arrays)
    with pytest.raises(CheckpointError, match="damaged"):
        cifar100.load(tmp_path / "damaged.npz")


def test_a_name_is_registered_once():
    from cifar100.export.formats import ExportFormat, register_format
    from cifar100.models.registry import BackboneSpec, register_backbone

    with pytest.raises(ValueError, match="registered twice"):
        register_backbone(BackboneSpec("resnet50v2", object, 1))
    with pytest.raises(ValueError, match="registered twice"):
        register_format(ExportFormat("onnx", ".onnx", print))
