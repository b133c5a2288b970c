"""CIFAR-10 and CIFAR-100 from the canonical python archives, decoded into uint8 tensors.

    splits = load_cifar("cifar100", path=None, cache_dir=Path("~/.cache/cifar100").expanduser())

`path` may be the .tar.gz, the extracted folder, or the folder holding it; None downloads the
archive (from $CIFAR100_MIRROR when set). Pickles are read straight out of the tar, through an
unpickler that only rebuilds numpy arrays. A decoded copy is kept as an .npz in the cache.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifar100.data.cifar_cache import DECODED_VERSION, load_decoded, save_decoded
from cifar100.data.cifar_sources import (
    COARSE_KEY,
    COARSE_NAMES_KEY,
    IMAGE_BYTES,
    MIRROR_ENV,
    NUM_COARSE,
    CifarSource,
    cifar_source,
    source_url,
)
from cifar100.data.cifar_unpickler import unpickle_arrays
from cifar100.data.download import fetch_cached, file_digest, size_limit
from cifar100.data.images import IMAGE_EXTENSIONS
from cifar100.data.tensors import DataSplits, ImageSet
from cifar100.errors import DataError
from cifar100.fileio import file_problem

# An image folder or tarball given where CIFAR's python archive was expected (no --dataset folder).
IMAGE_FOLDER_HINT = (
    "a {what}, not the {title} python archive: to train on these images as an image folder, "
    "add --dataset folder (data.dataset=folder)"
)


def load_cifar(
    name: str,
    path: str | os.PathLike | None,
    cache_dir: Path,
    progress: bool = True,
    base_url: str | None = None,
) -> DataSplits:
    """Load CIFAR-100 or CIFAR-10 ("cifar100" | "cifar10") into memory as uint8 NHWC tensors."""
    source = cifar_source(name)
    cache_dir = Path(cache_dir)
    if path is None:
        url = source_url(name, base_url)
        hint = (
            f"download {source.filename} yourself and pass it with --data PATH, "
            f"or set {MIRROR_ENV} to a mirror that holds it"
        )
        archive = fetch_cached(
            url,
            cache_dir,
            source.filename,
            md5=source.md5,
            progress=progress,
            hint=hint,
            max_bytes=size_limit(source.size),
        )
        # fetch_cached has just verified it against the published digest.
        return _from_archive(source, archive, source.md5, url, cache_dir)
    path = Path(path).expanduser()
    problem = file_problem(path, folder_ok=True)  # before anything opens it: a FIFO would block
    if problem:
        raise DataError(
            f"{path}: {problem}; give {source.filename} or its extracted folder, or leave out "
            "--data to download it"
        )
    if path.is_dir():
        folder = _find_folder(source, path)
        arrays = _decode(source, _read_folder(source, folder), f"{folder}/")
        info = {"archive_md5": None, "canonical": None, "decoded_cache": None}
        return _to_splits(source, arrays, str(folder), info)
    if not path.is_file():
        raise DataError(
            f"{path}: no such file or folder; give {source.filename} or its extracted folder, "
            "or leave out --data to download it"
        )
    # A re-packed archive has another md5 yet may be fine: its contents are checked instead.
    try:
        md5 = file_digest(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    return _from_archive(source, path, md5, str(path), cache_dir)


def _from_archive(
    source: CifarSource, archive: Path, md5: str, origin: str, cache_dir: Path
) -> DataSplits:
    decoded = cache_dir / "decoded" / f"{source.name}-{md5}-v{DECODED_VERSION}.npz"
    info = {"archive_md5": md5, "canonical": md5 == source.md5, "decoded_cache": str(decoded)}
    arrays = load_decoded(source, decoded)
    if arrays is None:
        parts = _read_archive(source, archive)
        arrays = _decode(source, parts, f"{archive}:{source.folder}/")
        save_decoded(decoded, arrays)
    return _to_splits(source, arrays, origin, info)


# --- reading the pickles ---------------------------------------------------------------------


def _read_archive(source: CifarSource, archive: Path) -> dict[str, Any]:
    """Unpickle the needed members in one pass over the (gzipped) tar; nothing touches disk."""
    wanted = {f"{source.folder}/{m}": m for m in source.members}
    found: dict[str, Any] = {}
    images = 0  # members named as image files: an image-folder tarball, given for CIFAR
    try:
        # Iterating reads the stream once; looking members up by name would gunzip it again.
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                key = wanted.get(member.name.removeprefix("./"))
                if key is not None and member.isfile():
                    label = f"{archive}:{member.name}"
                    _check_size(source, key, member.size, label)
                    found[key] = unpickle_arrays(tar.extractfile(member), label)
                elif member.isfile() and Path(member.name).suffix.lower() in IMAGE_EXTENSIONS:
                    images += 1
    except DataError:
        raise
    except Exception as e:  # tarfile.ReadError, EOFError, gzip.BadGzipFile, zlib.error, OSError
        raise DataError(
            f"{archive}: truncated or corrupt archive ({type(e).__name__}: {e}); "
            "delete it and download it again"
        ) from e
    missing = [f"{source.folder}/{m}" for m in source.members if m not in found]
    if missing and not found and images:
        what = f"tarball of {images:,} images"
        raise DataError(f"{archive}: " + IMAGE_FOLDER_HINT.format(what=what, title=source.title))
    if missing:
        raise DataError(
            f"{archive}: missing {', '.join(missing)}; is it the {source.title} "
            f"python archive ({source.filename})?"
        )
    return found


def _find_folder(source: CifarSource, path: Path) -> Path:
    for folder in (path, path / source.folder):
        # exists, not is_file: a member that is a FIFO or a device is then named for what it is
        if all((folder / m).exists() for m in source.members):
            return folder
    if _holds_images(path):
        raise DataError(
            f"{path}: {IMAGE_FOLDER_HINT.format(what='folder of images', title=source.title)}"
        )
    raise DataError(
        f"{path}: not an extracted {source.title} folder: expected "
        f"{', '.join(source.members)} in it or in {path / source.folder}"
    )


def _holds_images(path: Path, look: int = 2000) -> bool:
    """Whether image files lie among the first `look` entries under `path` (class folders)."""
    for i, entry in enumerate(path.rglob("*")):
        if i >= look:
            return False
        if entry.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file():
            return True
    return False


def _read_folder(source: CifarSource, folder: Path) -> dict[str, Any]:
    found = {}
    for m in source.members:
        path = folder / m
        problem = file_problem(path)
        if problem:
            raise DataError(f"{path}: {problem}; extract {source.filename} again")
        try:
            with path.open("rb") as f:
                _check_size(source, m, os.fstat(f.fileno()).st_size, str(path))
                found[m] = unpickle_arrays(f, str(path))
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    return found


def _check_size(source: CifarSource, member: str, size: int, label: str) -> None:
    # Checked before unpickling, which would hold all of it: a few MB of gzip can declare GBs.
    limit = source.member_limit(member)
    if size > limit:
        raise DataError(
            f"{label}: {size} bytes, more than a {source.title} '{member}' can take "
            f"({limit}); not the {source.title} python archive ({source.filename})"
        )


# --- validating and converting ---------------------------------------------------------------


def _decode(source: CifarSource, parts: dict[str, Any], prefix: str) -> dict[str, np.ndarray]:
    """Check every field we use and turn the pickled dicts into named NHWC arrays.

    `prefix` + member name says where a member came from in error messages.
    """

    def label(member: str) -> str:
        return prefix + member

    meta = parts[source.meta_member]
    arrays = {
        "classes": _names(meta, source.names_key, source.num_classes, label(source.meta_member))
    }
    if source.has_coarse:
        arrays["coarse_classes"] = _names(
            meta, COARSE_NAMES_KEY, NUM_COARSE, label(source.meta_member)
        )
    for split, members in (("train", source.train_members), ("test", (source.test_member,))):
        images, labels, coarse = [], [], []
        for m in members:
            images.append(_images(parts[m], label(m)))
            n = len(images[-1])
            labels.append(_labels(parts[m], source.label_key, n, source.num_classes, label(m)))
            if source.has_coarse:
                coarse.append(_labels(parts[m], COARSE_KEY, n, NUM_COARSE, label(m)))
        arrays[f"{split}_images"] = np.concatenate(images)
        arrays[f"{split}_labels"] = np.concatenate(labels)
        if source.has_coarse:
            arrays[f"{split}_coarse"] = np.concatenate(coarse)
    return arrays


def _field(d: Any, key: bytes, label: str) -> Any:
    if not isinstance(d, dict):
        raise DataError(f"{label}: expected a dict, got {type(d).__name__}")
    if key not in d:
        raise DataError(f"{label}: missing key {key!r}")
    return d[key]


def _images(d: Any, label: str) -> np.ndarray:
    data = _field(d, b"data", label)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != IMAGE_BYTES
        or len(data) == 0
    ):
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{label}: b'data' must be a uint8 array (N, {IMAGE_BYTES}), got {what}")
    # Each row is channel-planar: 1024 red bytes, then green, then blue, each 32x32 row-major.
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _labels(d: Any, key: bytes, n: int, num_classes: int, label: str) -> np.ndarray:
    raw = _field(d, key, label)
    labels = np.asarray(raw) if isinstance(raw, (list, np.ndarray)) else None
    if labels is None or labels.ndim != 1 or (labels.dtype.kind not in "iu" and len(labels)):
        raise DataError(f"{label}: {key!r} must be a list of integers")
    if len(labels) != n:
        raise DataError(f"{label}: {key!r} has {len(labels)} labels for {n} images")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(
            f"{label}: {key!r} holds labels outside 0..{num_classes - 1} "
            f"(min {labels.min()}, max {labels.max()})"
        )
    return labels.astype(np.int64)


def _names(d: Any, key: bytes, count: int, label: str) -> np.ndarray:
    raw = _field(d, key, label)
    if not isinstance(raw, list) or len(raw) != count:
        got = f"{len(raw)}" if isinstance(raw, list) else type(raw).__name__
        raise DataError(f"{label}: {key!r} must list {count} class names, got {got}")
    try:
        names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw]
    except UnicodeDecodeError as e:
        raise DataError(f"{label}: {key!r} holds a name that is not UTF-8 ({e})") from e
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:  # two labels would print, and be scored, as one class
        raise DataError(
            f"{label}: {key!r} lists the class name {twice!r} twice; each class needs its own "
            "name (a damaged or hand-edited meta file?)"
        )
    return np.array(names, dtype=np.str_)


def _to_splits(
    source: CifarSource, arrays: dict[str, np.ndarray], origin: str, info: dict
) -> DataSplits:
    classes = arrays["classes"].tolist()
    coarse_classes = arrays["coarse_classes"].tolist() if source.has_coarse else None

    def split(name: str) -> ImageSet:
        coarse = arrays.get(f"{name}_coarse")
        return ImageSet(
            images=torch.from_numpy(arrays[f"{name}_images"]),
            labels=torch.from_numpy(arrays[f"{name}_labels"]),
            classes=classes,
            coarse_labels=None if coarse is None else torch.from_numpy(coarse),
            coarse_classes=coarse_classes,
        )

    return DataSplits(
        train=split("train"), test=split("test"), name=source.name, source=origin, info=info
    )
