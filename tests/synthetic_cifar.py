"""Synthetic CIFAR archives in exactly the canonical format, with the data they hold.

    data = cifar100_data(n_train=200, n_test=100)
    make_cifar100_archive(tmp_path / "cifar-100-python.tar.gz")   # same data for the same seed

The published files are Python 2 pickles (protocol 2): every str, keys and names included, is a
BINSTRING that loads as bytes with encoding="bytes", and numpy is named `numpy.core`.
`py2_pickle` writes that form; tests that mutate an archive use `cifar100_contents` +
`write_archive`.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
CIFAR100_FOLDER = "cifar-100-python"
CIFAR10_FOLDER = "cifar-10-batches-py"


@dataclass
class SyntheticCifar:
    """What an archive holds, in the loader's layout: images uint8 (N, 32, 32, 3)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    train_coarse: np.ndarray | None = None
    test_coarse: np.ndarray | None = None
    coarse_classes: list[str] | None = None


def cifar100_data(n_train: int = 200, n_test: int = 100, seed: int = 0) -> SyntheticCifar:
    rng = np.random.default_rng(seed)
    fine_train = rng.integers(0, 100, n_train)
    fine_test = rng.integers(0, 100, n_test)
    return SyntheticCifar(
        train_images=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        train_labels=fine_train,
        test_images=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        test_labels=fine_test,
        classes=[f"fine_{i:03d}" for i in range(100)],
        # As in the real set, each fine class lies in exactly one superclass.
        train_coarse=fine_train // 5,
        test_coarse=fine_test // 5,
        coarse_classes=[f"coarse_{i:02d}" for i in range(20)],
    )


def cifar10_data(n_train: int = 200, n_test: int = 100, seed: int = 0) -> SyntheticCifar:
    rng = np.random.default_rng(seed)
    return SyntheticCifar(
        train_images=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        train_labels=rng.integers(0, 10, n_train),
        test_images=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        test_labels=rng.integers(0, 10, n_test),
        classes=list(CIFAR10_CLASSES),
    )


def planar(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> the published (N, 3072) rows: all red, then green, then blue."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def _filenames(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}_s_{i:06d}.png".encode() for i in range(n)]


def cifar100_contents(data: SyntheticCifar) -> dict[str, object]:
    """Member path -> pickled object (dict) or raw bytes, as in cifar-100-python.tar.gz."""

    def split(images, fine, coarse, batch_label):
        return {
            b"filenames": _filenames("synthetic", len(images)),
            b"batch_label": batch_label,
            b"fine_labels": [int(x) for x in fine],
            b"coarse_labels": [int(x) for x in coarse],
            b"data": planar(images),
        }

    f = CIFAR100_FOLDER
    return {
        f"{f}/file.txt~": b"",
        f"{f}/train": split(
            data.train_images, data.train_labels, data.train_coarse, b"training batch 1 of 1"
        ),
        f"{f}/test": split(
            data.test_images, data.test_labels, data.test_coarse, b"testing batch 1 of 1"
        ),
        f"{f}/meta": {
            b"fine_label_names": [n.encode() for n in data.classes],
            b"coarse_label_names": [n.encode() for n in data.coarse_classes],
        },
    }


def cifar10_contents(data: SyntheticCifar) -> dict[str, object]:
    """Member path -> pickled object or raw bytes, as in cifar-10-python.tar.gz."""
    f = CIFAR10_FOLDER
    contents: dict[str, object] = {f"{f}/readme.html": b"<html></html>\n"}
    chunks = np.array_split(np.arange(len(data.train_images)), 5)
    for i, idx in enumerate(chunks, start=1):
        contents[f"{f}/data_batch_{i}"] = {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": [int(x) for x in data.train_labels[idx]],
            b"data": planar(data.train_images[idx]),
            b"filenames": _filenames(f"batch{i}", len(idx)),
        }
    contents[f"{f}/test_batch"] = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [int(x) for x in data.test_labels],
        b"data": planar(data.test_images),
        b"filenames": _filenames("test", len(data.test_images)),
    }
    contents[f"{f}/batches.meta"] = {
        b"num_cases_per_batch": len(chunks[0]),
        b"label_names": [n.encode() for n in data.classes],
        b"num_vis": 3072,
    }
    return contents


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it: str and bytes as BINSTRING, numpy as numpy.core."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        head = (
            pickle.SHORT_BINSTRING + bytes([n])
            if n < 256
            else pickle.BINSTRING + struct.pack("<i", n)
        )
        self.write(head + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin1"))

    def save_global(self, obj, name=None) -> None:
        if obj is _reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str
    dispatch[type(_reconstruct)] = save_global


def py2_pickle(obj: object) -> bytes:
    """`obj` pickled the way the published CIFAR files are (Python 2, protocol 2)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_archive(path: str | Path, contents: dict[str, object], pickler=py2_pickle) -> Path:
    """A .tar.gz of `contents` (objects pickled with `pickler`, bytes as they are).

    Reproducible: fixed mtimes and an empty gzip header name, so the md5 depends on data only.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folders = sorted({name.split("/")[0] for name in contents})
    with (
        open(path, "wb") as raw,
        gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, obj in contents.items():
            payload = obj if isinstance(obj, bytes) else pickler(obj)
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(payload), 0o644
            tar.addfile(info, io.BytesIO(payload))
    return path


def make_cifar100_archive(
    path: str | Path, n_train: int = 200, n_test: int = 100, seed: int = 0
) -> Path:
    """Write cifar-100-python.tar.gz's format to `path`; cifar100_data(...) has its contents."""
    return write_archive(path, cifar100_contents(cifar100_data(n_train, n_test, seed)))


def make_cifar10_archive(
    path: str | Path, n_train: int = 200, n_test: int = 100, seed: int = 0
) -> Path:
    """Write cifar-10-python.tar.gz's format to `path`; cifar10_data(...) has its contents."""
    return write_archive(path, cifar10_contents(cifar10_data(n_train, n_test, seed)))
