"""CIFAR-10 and CIFAR-100 from the canonical python archives, decoded into uint8 tensors.

    splits = load_cifar("cifar100", path=None, cache_dir=Path("~/.cache/cifar100").expanduser())

`path` may be the .tar.gz, the extracted folder, or the folder holding it; None downloads the
archive (from $CIFAR100_MIRROR when set). Pickles are read straight out of the tar, through an
unpickler that only rebuilds numpy arrays. A decoded copy is kept as an .npz in the cache.
"""

from __future__ import annotations

import os
import pickle
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from cifar100.data.download import fetch_cached, file_digest
from cifar100.data.tensors import DataSplits, ImageSet
from cifar100.errors import DataError
from cifar100.fileio import atomic_path

CANONICAL_BASE_URL = "https://www.cs.toronto.edu/~kriz"
MIRROR_ENV = "CIFAR100_MIRROR"
# Bump when the layout of the decoded .npz changes, so old caches are ignored, not misread.
DECODED_VERSION = 1
IMAGE_BYTES = 3 * 32 * 32


@dataclass(frozen=True)
class CifarSource:
    """Where one CIFAR variant is published and how its archive is laid out."""

    name: str
    title: str
    filename: str
    md5: str
    folder: str
    train_members: tuple[str, ...]
    test_member: str
    meta_member: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    has_coarse: bool  # CIFAR-100's 20 superclasses

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.train_members, self.test_member, self.meta_member)


# fmt: off
SOURCES: dict[str, CifarSource] = {
    "cifar100": CifarSource(
        name="cifar100", title="CIFAR-100", filename="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85", folder="cifar-100-python",
        train_members=("train",), test_member="test", meta_member="meta",
        label_key=b"fine_labels", names_key=b"fine_label_names", num_classes=100,
        has_coarse=True,
    ),
    "cifar10": CifarSource(
        name="cifar10", title="CIFAR-10", filename="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a", folder="cifar-10-batches-py",
        train_members=tuple(f"data_batch_{i}" for i in range(1, 6)), test_member="test_batch",
        meta_member="batches.meta", label_key=b"labels", names_key=b"label_names",
        num_classes=10, has_coarse=False,
    ),
}
# fmt: on
COARSE_KEY, COARSE_NAMES_KEY, NUM_COARSE = b"coarse_labels", b"coarse_label_names", 20


def source_url(name: str, base_url: str | None = None) -> str:
    """The archive's URL: `base_url`, else $CIFAR100_MIRROR, else the canonical site."""
    base = base_url or os.environ.get(MIRROR_ENV) or CANONICAL_BASE_URL
    return f"{base.rstrip('/')}/{_source(name).filename}"


def load_cifar(
    name: str,
    path: str | os.PathLike | None,
    cache_dir: Path,
    progress: bool = True,
    base_url: str | None = None,
) -> DataSplits:
    """Load CIFAR-100 or CIFAR-10 ("cifar100" | "cifar10") into memory as uint8 NHWC tensors."""
    source = _source(name)
    cache_dir = Path(cache_dir)
    if path is None:
        url = source_url(name, base_url)
        hint = (
            f"download {source.filename} yourself and pass it with --data PATH, "
            f"or set {MIRROR_ENV} to a mirror that holds it"
        )
        archive = fetch_cached(
            url, cache_dir, source.filename, md5=source.md5, progress=progress, hint=hint
        )
        # fetch_cached has just verified it against the published digest.
        return _from_archive(source, archive, source.md5, url, cache_dir)
    path = Path(path).expanduser()
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
    return _from_archive(source, path, file_digest(path), str(path), cache_dir)


def _source(name: str) -> CifarSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise DataError(
            f"unknown CIFAR dataset {name!r}; expected one of {sorted(SOURCES)}"
        ) from None


def _from_archive(
    source: CifarSource, archive: Path, md5: str, origin: str, cache_dir: Path
) -> DataSplits:
    decoded = cache_dir / "decoded" / f"{source.name}-{md5}-v{DECODED_VERSION}.npz"
    info = {"archive_md5": md5, "canonical": md5 == source.md5, "decoded_cache": str(decoded)}
    arrays = _load_decoded(source, decoded)
    if arrays is None:
        parts = _read_archive(source, archive)
        arrays = _decode(source, parts, f"{archive}:{source.folder}/")
        _save_decoded(decoded, arrays)
    return _to_splits(source, arrays, origin, info)


# --- reading the pickles ---------------------------------------------------------------------


def _safe_latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1"), so a
    # re-packed archive needs this; any other codec is refused.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2 (1.26 has the alias too); importing numpy.core would warn there
        from numpy._core import multiarray, numeric
    except ImportError:
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _safe_latin1_encode,
    }
    # The canonical files (Python 2, numpy 1) name numpy.core; numpy 2 pickles name numpy._core.
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    return allowed


_ALLOWED = _allowed_globals()


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists and numpy arrays; refuses every other global before it is called."""

    def __init__(self, file: IO[bytes], label: str) -> None:
        super().__init__(file, encoding="bytes")  # Python 2 str -> bytes, as published
        self.label = label

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.label}: refusing to unpickle {module}.{name} "
                "(CIFAR files hold only arrays and lists)"
            ) from None


def _unpickle(file: IO[bytes], label: str) -> Any:
    try:
        return _ArrayUnpickler(file, label).load()
    except DataError:
        raise
    except Exception as e:  # truncated gzip/tar, bad opcodes, bad numpy state: all one story
        raise DataError(
            f"{label}: truncated or corrupt ({type(e).__name__}: {e}); download or extract it again"
        ) from e


def _read_archive(source: CifarSource, archive: Path) -> dict[str, Any]:
    """Unpickle the needed members in one pass over the (gzipped) tar; nothing touches disk."""
    wanted = {f"{source.folder}/{m}": m for m in source.members}
    found: dict[str, Any] = {}
    try:
        # Iterating reads the stream once; looking members up by name would gunzip it again.
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                key = wanted.get(member.name.removeprefix("./"))
                if key is not None and member.isfile():
                    found[key] = _unpickle(tar.extractfile(member), f"{archive}:{member.name}")
    except DataError:
        raise
    except Exception as e:  # tarfile.ReadError, EOFError, gzip.BadGzipFile, zlib.error, OSError
        raise DataError(
            f"{archive}: truncated or corrupt archive ({type(e).__name__}: {e}); "
            "delete it and download it again"
        ) from e
    missing = [f"{source.folder}/{m}" for m in source.members if m not in found]
    if missing:
        raise DataError(
            f"{archive}: missing {', '.join(missing)}; is it the {source.title} "
            f"python archive ({source.filename})?"
        )
    return found


def _find_folder(source: CifarSource, path: Path) -> Path:
    for folder in (path, path / source.folder):
        if all((folder / m).is_file() for m in source.members):
            return folder
    raise DataError(
        f"{path}: not an extracted {source.title} folder: expected "
        f"{', '.join(source.members)} in it or in {path / source.folder}"
    )


def _read_folder(source: CifarSource, folder: Path) -> dict[str, Any]:
    found = {}
    for m in source.members:
        with open(folder / m, "rb") as f:
            found[m] = _unpickle(f, str(folder / m))
    return found


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


# --- the decoded cache -----------------------------------------------------------------------


def _save_decoded(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)  # a file object: np.savez would append .npz to a name
    except OSError as e:
        print(f"warning: could not cache decoded data at {path} ({e})", file=sys.stderr)


def _load_decoded(source: CifarSource, path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when absent or damaged (then rebuilt from the archive).

    Integrity: zipfile checks each member's stored CRC-32 as numpy reads it to the end, and the
    arrays are re-validated (shapes, dtypes, label ranges), which is cheap next to decoding.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        _check_decoded(source, arrays)
        return arrays
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, DataError) as e:
        print(f"warning: decoded cache {path} is damaged ({e}); rebuilding it", file=sys.stderr)
        return None


def _check_decoded(source: CifarSource, arrays: dict[str, np.ndarray]) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise DataError(what)

    need(len(arrays["classes"]) == source.num_classes, "wrong number of classes")
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        need(images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3), f"{split} images")
        need(labels.dtype == np.int64 and labels.shape == (len(images),), f"{split} labels")
        need(0 <= labels.min() and labels.max() < source.num_classes, f"{split} label range")
        if source.has_coarse:
            coarse = arrays[f"{split}_coarse"]
            need(coarse.dtype == np.int64 and coarse.shape == labels.shape, f"{split} coarse")
            need(0 <= coarse.min() and coarse.max() < NUM_COARSE, f"{split} coarse range")
    if source.has_coarse:
        need(len(arrays["coarse_classes"]) == NUM_COARSE, "wrong number of coarse classes")
