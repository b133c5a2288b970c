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
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifar100.errors import ModelError


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
    h5py = _h5py()
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        # A .keras archive: config.json beside the weights in the Keras 3 layout.
        try:
            with zipfile.ZipFile(path) as z:
                config = json.loads(z.read("config.json"))
                data = z.read("model.weights.h5")
        except (KeyError, ValueError, zipfile.BadZipFile) as e:
            raise ModelError(f"{path}: a zip file but not a Keras .keras archive ({e})") from None
        with h5py.File(io.BytesIO(data), "r") as f:
            yield f, config
        return
    if not h5py.is_hdf5(path):
        raise ModelError(f"{path}: not an HDF5 file (nor a .keras archive); expected Keras weights")
    with h5py.File(path, "r") as f:
        raw = f.attrs.get("model_config")
        config = json.loads(_text(raw)) if raw is not None else None
        yield f, config


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
    if "model_weights" in f:  # a whole model saved with model.save("m.h5")
        _read_legacy(f["model_weights"], layers, path)
    elif _attr_list(f, "layer_names") is not None:  # model.save_weights("w.h5") (Keras 2)
        _read_legacy(f, layers, path)
    elif "layers" in f:  # Keras 3 .weights.h5, also inside .keras archives
        _read_keras3(f, "", layers, path)
    else:
        raise ModelError(f"{path}: an HDF5 file but not Keras weights (no layer_names or layers)")
    return layers


def _add(layers: dict[str, KerasLayer], layer: KerasLayer, path: str | os.PathLike) -> None:
    if layer.name in layers:
        raise ModelError(f"{path}: layer {layer.name!r} is stored twice")
    layers[layer.name] = layer


def _read_legacy(root: Any, layers: dict[str, KerasLayer], path: str | os.PathLike) -> None:
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
            layer.weights.append((parts[-1].split(":")[0], np.asarray(group[name])))
        for layer in found.values():
            _add(layers, layer, path)


def _read_keras3(group: Any, scope: str, layers: dict[str, KerasLayer], path) -> None:
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
            values = [(None, np.asarray(variables[str(i)])) for i in range(len(variables))]
            _add(layers, KerasLayer(name, scope, values), path)
        if "layers" in child:
            _read_keras3(child, name or key, layers, path)
