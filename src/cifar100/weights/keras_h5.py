"""Keras HDF5 weight files read with h5py alone: legacy .h5, Keras 3 .weights.h5 and .keras
archives, opened and flattened into one KerasLayer (stored weights, in file order) per layer.

Layouts: legacy HDF5 (Keras 2 `save_weights`/`save`, Keras 3 `save("m.h5")`: attrs
`layer_names`, per-layer `weight_names`), Keras 3 `.weights.h5` (`layers/<key>/vars/<i>`, the
layer's name in the vars attrs) and `.keras` archives (a zip holding such a model.weights.h5).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifar100.errors import ModelError
from cifar100.fileio import file_problem

# Bounds on what a weights file may make us read. h5py reads a dataset whole into memory, and a
# tiny file can declare gigabytes: a compressed dataset, or one never written (read as its fill
# value). The largest tensor of the models read here is a ResNet50V2 3x3x512x512 kernel, 9.4 MB
# in float32; the report's head is a Dense layer on 2048 pooled features, so 64 MiB lets it
# have 8192 units. ResNet50V2 and that head hold 24M values (97 MB in float32, 193 in float64).
MAX_TENSOR_BYTES = 64 << 20
MAX_WEIGHT_BYTES = 256 << 20
# A .keras archive's members, read whole (Keras stores them uncompressed). Its weights file also
# holds the optimizer's state: up to three more copies of each trainable weight (Adam with
# AMSGrad), beside HDF5's own structures. Its config.json takes ~150 KB for the report's model.
MAX_ARCHIVE_WEIGHTS = 4 * MAX_WEIGHT_BYTES + (16 << 20)
MAX_ARCHIVE_CONFIG = 16 << 20
# What h5py raises on a damaged or truncated file, depending on which structure is hit
# (ValueError covers bad strings and bad JSON too).
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError)


@dataclass
class KerasLayer:
    """One Keras layer's stored weights, in file order; a name is None where only order is known."""

    name: str
    scope: str  # the nested model that holds it; "" at the top level
    weights: list[tuple[str | None, np.ndarray]]


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ModelError("reading Keras weight files needs h5py: pip install h5py") from None
    return h5py


@contextlib.contextmanager
def open_keras_file(path: str | os.PathLike) -> Iterator[tuple[Any, dict | None]]:
    """(the weights HDF5 file, the model config or None for a weights-only file)."""
    path = Path(path)
    problem = file_problem(path)  # before anything opens it: a FIFO would block
    if problem:
        raise ModelError(f"{path}: {problem}; give a Keras .h5 or .keras file")
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror or e})") from None
    with contextlib.ExitStack() as stack:
        try:
            # A zip's first bytes also tell one that was cut short, which is_zipfile misses.
            if magic == b"PK\x03\x04" or zipfile.is_zipfile(path):
                opened = _open_archive(path, stack)
            else:
                opened = _open_h5(path, stack)
        except ModelError:
            raise
        except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError) as e:
            raise ModelError(
                f"{path}: a truncated or damaged .keras archive ({e}); save or copy it again"
            ) from None
        except _H5_ERRORS as e:
            raise ModelError(_damaged(path, e)) from None
        yield opened


def _open_archive(path: Path, stack: contextlib.ExitStack) -> tuple[Any, dict]:
    """A .keras archive: config.json beside the weights, in the Keras 3 layout."""
    with zipfile.ZipFile(path) as z:
        config = _json(_member(z, "config.json", MAX_ARCHIVE_CONFIG, path), f"{path}:config.json")
        data = _member(z, "model.weights.h5", MAX_ARCHIVE_WEIGHTS, path)
    return stack.enter_context(_h5py().File(io.BytesIO(data), "r")), config


def _open_h5(path: Path, stack: contextlib.ExitStack) -> tuple[Any, dict | None]:
    h5py = _h5py()
    if not h5py.is_hdf5(path):
        raise ModelError(f"{path}: not an HDF5 file (nor a .keras archive); expected Keras weights")
    f = stack.enter_context(h5py.File(path, "r"))
    raw = f.attrs.get("model_config")
    return f, None if raw is None else _json(_text(raw), f"{path}: its model_config")


def _member(z: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    try:
        info = z.getinfo(name)
    except KeyError:
        raise ModelError(f"{path}: a zip file but not a Keras .keras archive (no {name})") from None
    if info.file_size > limit:  # the size its directory declares, checked before reading it
        raise ModelError(
            f"{path}: {name} in it declares {info.file_size} bytes, more than a model of the "
            f"architectures read here can take ({limit}); not a .keras file of such a model"
        )
    return z.read(info)


def _json(text: str | bytes, what: str) -> dict:
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ModelError(
            f"{what} is not valid JSON ({e}): a damaged file; save the model again"
        ) from None
    if not isinstance(config, dict):
        raise ModelError(f"{what} is JSON but not a Keras model config (an object)")
    return config


def _damaged(path: str | os.PathLike, e: Exception) -> str:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{path}: a truncated or damaged HDF5 file ({reason}); save or download it again"


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes | np.bytes_) else str(value)


def _attr_list(group: Any, name: str) -> list[str] | None:
    """A string-list attribute; Keras splits long ones into name0, name1, ... (64 KiB limit)."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    elif f"{name}0" in group.attrs:
        chunks = []
        while f"{name}{len(chunks)}" in group.attrs:
            chunks.append(group.attrs[f"{name}{len(chunks)}"])
    else:
        return None
    return [_text(v) for chunk in chunks for v in np.atleast_1d(np.asarray(chunk)).tolist()]


def read_keras_layers(f: Any, path: str | os.PathLike) -> dict[str, KerasLayer]:
    """Every layer with weights in an open Keras HDF5 file, by layer name, nesting flattened."""
    layers: dict[str, KerasLayer] = {}
    read = _WeightReader(path)
    try:
        if "model_weights" in f:  # a whole model saved with model.save("m.h5")
            _read_legacy(f["model_weights"], layers, read)
        elif _attr_list(f, "layer_names") is not None:  # model.save_weights("w.h5") (Keras 2)
            _read_legacy(f, layers, read)
        elif "layers" in f:  # Keras 3 .weights.h5, also inside .keras archives
            _read_keras3(f, "", layers, read)
        else:
            raise ModelError(
                f"{path}: an HDF5 file but not Keras weights (no layer_names or layers)"
            )
    except _H5_ERRORS as e:
        raise ModelError(_damaged(path, e)) from None
    return layers


class _WeightReader:
    """Reads weight datasets, each checked before h5py allocates it: numbers, stored in this
    file, and within MAX_TENSOR_BYTES alone and MAX_WEIGHT_BYTES all together."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path, self.total = path, 0

    def __call__(self, dataset: Any) -> np.ndarray:
        h5py, where = _h5py(), f"{self.path}: {getattr(dataset, 'name', dataset)!r}"
        if not isinstance(dataset, h5py.Dataset) or dataset.shape is None:
            raise ModelError(f"{where} is not an array of weights")
        if dataset.dtype.kind not in "fiub":
            raise ModelError(f"{where} holds {dataset.dtype}, not numbers")
        if dataset.is_virtual or dataset.external:
            raise ModelError(f"{where} is stored outside the file; weights must be inside it")
        size = math.prod(dataset.shape) * dataset.dtype.itemsize  # Python ints: no overflow
        self.total += size
        if size > MAX_TENSOR_BYTES:
            raise ModelError(
                f"{where} declares shape {dataset.shape} ({size} bytes), more than any weight "
                f"of the models read here ({MAX_TENSOR_BYTES}); not weights of such a model"
            )
        if self.total > MAX_WEIGHT_BYTES:
            raise ModelError(
                f"{self.path}: its weights declare more than {MAX_WEIGHT_BYTES} bytes in all, "
                "more than the models read here hold; not weights of such a model"
            )
        return np.asarray(dataset)


def _add(layers: dict[str, KerasLayer], layer: KerasLayer, path: str | os.PathLike) -> None:
    if layer.name in layers:
        raise ModelError(f"{path}: layer {layer.name!r} is stored twice")
    layers[layer.name] = layer


def _read_legacy(root: Any, layers: dict[str, KerasLayer], read: _WeightReader) -> None:
    path = read.path
    for group_name in _attr_list(root, "layer_names") or []:
        if group_name not in root:
            raise ModelError(f"{path}: layer {group_name!r} is listed but not stored")
        group = root[group_name]
        names = _attr_list(group, "weight_names") or []
        # A nested model (e.g. the backbone inside the report's model) keeps all its layers'
        # weights in one group, as "<layer>/<weight>[:0]"; a plain layer's all share one owner.
        owners = {n.split("/")[-2] if "/" in n else group_name for n in names}
        nested = len(owners) > 1
        found: dict[str, KerasLayer] = {}
        for name in names:
            parts = name.split("/")
            owner = parts[-2] if nested else group_name
            layer = found.setdefault(owner, KerasLayer(owner, group_name if nested else "", []))
            if name not in group:
                raise ModelError(f"{path}: layer {owner!r}: weight {name!r} is listed but absent")
            layer.weights.append((parts[-1].split(":")[0], read(group[name])))
        for layer in found.values():
            _add(layers, layer, path)


def _read_keras3(
    group: Any, scope: str, layers: dict[str, KerasLayer], read: _WeightReader
) -> None:
    path = read.path
    for key in group["layers"]:
        child = group["layers"][key]
        variables = child.get("vars")
        has_name = variables is not None and "name" in variables.attrs
        name = _text(variables.attrs["name"]) if has_name else None
        if variables is not None and len(variables):
            if name is None:
                # Older Keras 3 versions key layers by class ("conv2d_7") and store no names.
                raise ModelError(
                    f"{path}: layer group {child.name!r} carries no layer name (an older Keras 3 "
                    "file); re-save the model with model.save('model.h5')"
                )
            values = [(None, read(variables[str(i)])) for i in range(len(variables))]
            _add(layers, KerasLayer(name, scope, values), path)
        if "layers" in child:
            _read_keras3(child, name or key, layers, read)
