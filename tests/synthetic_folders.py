"""Test helpers: small synthetic images, image folders and tarballs written with Pillow."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def class_colour(label: int) -> tuple[int, int, int]:
    """The colour that fills every image of class `label` (so labels can be checked)."""
    return (40 * label % 256, 255 - 40 * label % 256, 90)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def class_image(label: int, index: int, size: int = 8) -> Image.Image:
    """An image filled with class `label`'s colour; pixel (0, 0) encodes `index`."""
    arr = np.empty((size, size, 3), np.uint8)
    arr[:] = class_colour(label)
    arr[0, 0] = (index % 256, index // 256, 7)
    return Image.fromarray(arr)


def image_id(image: np.ndarray) -> int:
    """The `index` that class_image stored in pixel (0, 0)."""
    return int(image[0, 0, 0]) + 256 * int(image[0, 0, 1])


def write_classes(root: Path, counts: dict[str, int], size: int = 8, start: int = 0) -> None:
    """root/<class>/<n>.png for each class (labels follow sorted class names)."""
    for label, name in enumerate(sorted(counts)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(counts[name]):
            class_image(label, start + i, size).save(root / name / f"{start + i:04d}.png")


def write_split_folder(
    root: Path, train: dict[str, int], test: dict[str, int], test_name: str = "test"
) -> Path:
    """root/train/<class>/... and root/<test_name>/<class>/...; returns root."""
    write_classes(root / "train", train)
    write_classes(root / test_name, test, start=1000)
    return root


def tar_directory(directory: Path, target: Path, arcname: str | None = None) -> Path:
    """Pack `directory` (as `arcname`, default its name) into `target`; compression by suffix."""
    mode = "w:gz" if target.name.endswith((".tar.gz", ".tgz")) else "w"
    with tarfile.open(target, mode) as tar:
        tar.add(directory, arcname=arcname or directory.name)
    return target


def tar_members(target: Path, members: list[tuple[str, bytes | str]]) -> Path:
    """A tarball of (name, bytes) regular files; a str instead of bytes makes a symlink to it."""
    with tarfile.open(target, "w:gz" if target.name.endswith(".gz") else "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return target


class ZeroRun:
    """`head`, then `zeros` zero bytes, then `tail`, made as they are read: a member of
    gigabytes that costs no memory to write (tarfile.addfile(info, ZeroRun(...)))."""

    def __init__(self, head: bytes, zeros: int, tail: bytes = b"") -> None:
        self.head, self.zeros, self.tail = head, zeros, tail
        self.size = len(head) + zeros + len(tail)

    def read(self, n: int = -1) -> bytes:
        n = self.size if n < 0 else n
        out = self.head[:n]
        self.head = self.head[len(out) :]
        zeros = min(n - len(out), self.zeros)
        self.zeros -= zeros
        rest = self.tail[: n - len(out) - zeros]
        self.tail = self.tail[len(rest) :]
        return out + bytes(zeros) + rest


def tar_zero_runs(target: Path, members: list[tuple[str, ZeroRun]], level: int = 1) -> Path:
    """A tarball (gzip at `level` if named .gz) of members streamed from ZeroRuns."""
    mode = "w:gz" if target.name.endswith((".gz", ".tgz")) else "w"
    kwargs = {"compresslevel": level} if mode == "w:gz" else {}
    with tarfile.open(target, mode, copybufsize=1 << 20, **kwargs) as tar:
        for name, run in members:
            info = tarfile.TarInfo(name)
            info.size = run.size
            tar.addfile(info, run)
    return target
