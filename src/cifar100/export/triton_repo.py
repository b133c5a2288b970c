"""A Triton Inference Server model repository entry for an exported ONNX classifier.

    write_triton_repository(Path("model.onnx"), Path("models"), "cifar100", classes)
    # models/cifar100/config.pbtxt, models/cifar100/labels.txt, models/cifar100/1/model.onnx
    # then: tritonserver --model-repository=models

config.pbtxt's inputs and outputs are read from the ONNX graph itself, so they cannot drift
from the file Triton loads: "probabilities" and "logits" [C], "ood_score" and "none_of_these"
(one value an image, declared as Triton wants a batch-only tensor: dims [1], reshaped to []).
The entry appears whole or not at all: it is written into a hidden directory beside the
target and renamed into place.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import shutil
import tempfile
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from cifar100.display_text import display_name, visible
from cifar100.errors import ModelError, WriteError
from cifar100.export.job import ExportJob, ExportResult
from cifar100.export.onnx_export import write_onnx_export
from cifar100.fileio import check_free_space, check_writable, write_failure
from cifar100.version import __version__  # not `import cifar100`: its API imports export

# A directory name and a URL path segment (/v2/models/<name>); Triton itself refuses "/" and
# "..", and a leading dot would hide the entry (and clash with the temporary directories).
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
LABELS_FILE = "labels.txt"
# Waiting up to 0.1 ms for more requests costs a lone request nothing noticeable next to a
# forward pass, and lets concurrent ones share a batch.
QUEUE_DELAY_US = 100
TRITON_TYPES = {
    TensorProto.BOOL: "TYPE_BOOL",
    TensorProto.UINT8: "TYPE_UINT8",
    TensorProto.UINT16: "TYPE_UINT16",
    TensorProto.UINT32: "TYPE_UINT32",
    TensorProto.UINT64: "TYPE_UINT64",
    TensorProto.INT8: "TYPE_INT8",
    TensorProto.INT16: "TYPE_INT16",
    TensorProto.INT32: "TYPE_INT32",
    TensorProto.INT64: "TYPE_INT64",
    TensorProto.FLOAT16: "TYPE_FP16",
    TensorProto.FLOAT: "TYPE_FP32",
    TensorProto.DOUBLE: "TYPE_FP64",
    TensorProto.BFLOAT16: "TYPE_BF16",
    TensorProto.STRING: "TYPE_STRING",
}


def write_triton_repository(
    onnx_path: Path,
    out_dir: Path,
    name: str,
    classes: list[str],
    *,
    max_batch: int = 64,
    version: int = 1,
    force: bool = False,
) -> Path:
    """Write out_dir/name (config.pbtxt, labels.txt, <version>/model.onnx); return that path.

    An existing non-empty out_dir/name is refused unless `force`, which replaces it whole.
    """
    if not MODEL_NAME.fullmatch(name):
        raise ModelError(
            f"Triton model name {name!r}: use letters, digits, '_', '-' and '.', starting with "
            "a letter or digit, at most 128 characters"
        )
    if max_batch < 1:
        raise ModelError(f"max_batch={max_batch}: Triton batching needs at least 1")
    if version < 1:
        raise ModelError(f"version={version}: Triton model versions start at 1")
    check_label_names(classes)
    graph = _load_graph(onnx_path)
    initializers = {t.name for t in graph.initializer}
    inputs = [_tensor(v, onnx_path) for v in graph.input if v.name not in initializers]
    outputs = [_tensor(v, onnx_path) for v in graph.output]
    labelled = [t["name"] for t in outputs if t["dims"] == [len(classes)]]
    if not labelled:
        shapes = ", ".join(f"{t['name']} {t['dims']}" for t in outputs)
        raise ModelError(
            f"{onnx_path}: no output has one score per class ({len(classes)} class names; "
            f"outputs without the batch axis: {shapes})"
        )
    config = _config_text(name, onnx_path.name, max_batch, inputs, outputs, labelled)
    target = out_dir / name
    check_target(target, force)
    _write_entry(target, config, classes, onnx_path, version)
    return target


def check_target(target: Path, force: bool) -> None:
    """Refuse a repository entry that exists (unless `force`): checked before any slow step."""
    if target.is_symlink() or target.exists() and not target.is_dir():
        raise ModelError(f"{target} exists and is not a directory; choose another name")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise ModelError(
            f"{target} already holds a model; choose another name or directory, or replace "
            "it (--force)"
        )


def write_triton_export(job: ExportJob) -> ExportResult:
    """`--format triton`: the job's model as an entry `job.name` of the repository `job.out`,
    around its ONNX export (made here, or the file itself for an ONNX export)."""
    model = job.model
    check_label_names(model.classes)  # these two before the slow ONNX export
    check_target(job.out / job.name, job.force)
    check_writable(job.out / job.name, "triton export")
    details, note = {}, ""
    # Beside the repository, not in it: Triton takes every folder there for a model.
    with tempfile.TemporaryDirectory(dir=_existing_parent(job.out.parent)) as tmp:
        if model.runtime == "onnx":  # already an ONNX export: Triton runs that file
            onnx_path = model.source
        else:
            onnx_path = Path(tmp) / "model.onnx"
            result = write_onnx_export(dataclasses.replace(job, out=onnx_path))
            details, note = result.details, result.note
        repo = write_triton_repository(
            onnx_path, job.out, job.name, model.classes, max_batch=job.max_batch, force=job.force
        )
    return ExportResult(repo, "triton", details, note)


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def check_label_names(classes: Sequence[str]) -> None:
    """Refuse class names that labels.txt, one name a line in UTF-8, cannot hold as they are:
    a control character (a newline, but also a vertical tab or U+0085, which other readers
    split lines at too), a line or paragraph separator, a lone surrogate (an undecodable byte
    of a folder name), or nothing at all. Refused, not encoded: a client reads the names
    from the file as they are. The ONNX export keeps any name, as JSON in its metadata."""
    if not classes:
        raise ModelError("class names: Triton's labels.txt needs at least one")
    for i, name in enumerate(classes, 1):
        bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs")), "")
        if name and not bad:
            continue
        what = f"holds {visible(bad)}" if bad else "is empty"
        raise ModelError(
            f"class {i} of {len(classes)}, '{display_name(name, 60)}', {what}, which would break "
            f"Triton's {LABELS_FILE} (one name a line): rename that class (its folder, or its "
            "--class-names line) and train again, or export --format onnx, whose metadata "
            "keeps any name"
        )


def _load_graph(onnx_path: Path) -> onnx.GraphProto:
    try:
        proto = onnx.load(onnx_path, load_external_data=False)
    except (OSError, DecodeError) as e:
        raise ModelError(f"cannot read ONNX model {onnx_path}: {e}") from e
    # Only model.onnx is copied into the repository: weights in side files would be left out.
    if any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise ModelError(f"{onnx_path} keeps its weights in external files; export it whole")
    return proto.graph


def _tensor(value: onnx.ValueInfoProto, onnx_path: Path) -> dict:
    """{name, data_type, dims}, dims without the batch axis (Triton adds it: max_batch_size)."""
    tensor = value.type.tensor_type
    if tensor.elem_type not in TRITON_TYPES:
        type_name = TensorProto.DataType.Name(tensor.elem_type)
        raise ModelError(f"{onnx_path}: {value.name!r} is {type_name}, which Triton cannot carry")
    dims = list(tensor.shape.dim)
    if not dims or dims[0].HasField("dim_value"):
        batch = dims[0].dim_value if dims else "no batch axis"
        raise ModelError(
            f"{onnx_path}: {value.name!r} has a fixed batch size ({batch}); Triton's batching "
            "needs a dynamic first axis; export it with one"
        )
    return {
        "name": value.name,
        "data_type": TRITON_TYPES[tensor.elem_type],
        "dims": [d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:]],
    }


def _config_text(
    name: str,
    source: str,
    max_batch: int,
    inputs: list[dict],
    outputs: list[dict],
    labelled: list[str],
) -> str:
    """config.pbtxt in protobuf text format (Triton's ModelConfig), written by hand so that
    the package needs no Triton library to write it."""

    def block(tensor: dict, extra: list[str]) -> str:
        # A tensor of shape (batch,) alone: Triton needs a dim, so [1], reshaped to the model's [].
        dims = tensor["dims"] or [1]
        reshape = [] if tensor["dims"] else ["reshape: { shape: [ ] }"]
        fields = [
            f"name: {_quote(tensor['name'])}",
            f"data_type: {tensor['data_type']}",
            f"dims: [ {', '.join(str(d) for d in dims)} ]",
            *reshape,
            *extra,
        ]
        return "  {\n" + "".join(f"    {f}\n" for f in fields) + "  }"

    def image_format(tensor: dict) -> list[str]:
        # Triton's image clients read this to lay out pixels; (H, W, 3) is channels last.
        dims = tensor["dims"]
        return ["format: FORMAT_NHWC"] if len(dims) == 3 and dims[2] == 3 else []

    def label(tensor: dict) -> list[str]:
        # The classification extension ("class_count" in a request) names classes from here.
        return [f"label_filename: {_quote(LABELS_FILE)}"] if tensor["name"] in labelled else []

    input_blocks = ",\n".join(block(t, image_format(t)) for t in inputs)
    output_blocks = ",\n".join(block(t, label(t)) for t in outputs)
    return (
        f"# Written by cifar100 {__version__} from {source}; inputs and outputs are\n"
        "# the ONNX graph's own. Instances: Triton's default (one per GPU, else the CPU).\n"
        f"name: {_quote(name)}\n"
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch}\n"
        f"input [\n{input_blocks}\n]\n"
        f"output [\n{output_blocks}\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}\n"
    )


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _write_entry(
    target: Path, config: str, classes: list[str], onnx_path: Path, version: int
) -> None:
    """Build the entry in a hidden sibling directory, then rename it onto `target`."""
    needed = onnx_path.stat().st_size
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
    old = tmp.with_suffix(".old")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        check_free_space(target.parent, needed, "Triton model repository")
        tmp.mkdir()  # mkdir, not mkdtemp: the entry gets the usual mode, readable by Triton
        _write_synced(tmp / "config.pbtxt", config.encode("utf-8"))
        _write_synced(tmp / LABELS_FILE, "".join(f"{c}\n" for c in classes).encode("utf-8"))
        (tmp / str(version)).mkdir()
        shutil.copyfile(onnx_path, tmp / str(version) / "model.onnx")
        _fsync(tmp / str(version) / "model.onnx")
        if target.is_dir():  # empty, or `force`: set it aside, so that a failure can restore it
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except OSError:
            if old.exists():
                os.rename(old, target)
            raise
    except WriteError:
        raise  # already names the target and the space
    except OSError as e:
        raise write_failure(target, needed, e, "Triton model repository") from e
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def _write_synced(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    _fsync(path)


def _fsync(path: Path) -> None:
    # So that the rename never exposes an entry whose bytes are still in flight.
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
