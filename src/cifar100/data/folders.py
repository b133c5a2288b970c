"""Image folders: a directory or tarball of class subfolders, decoded once and cached.

    load_image_folder("~/pets", image_size=32, cache_dir=cache)     # pets/<class>/*.jpg

Layouts: ROOT/<class>/... (a seeded, stratified test split is made), or ROOT/train/<class>/...
beside ROOT/test/<class>/... (val/, valid/ or validation/ stand in for a missing test/).
A single wrapping folder (cifar10-jpeg/ in cifar10-jpeg.tar.gz) is descended into.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import sys
import tarfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import PIL
import torch
from tqdm import tqdm

from cifar100.data.download import file_digest
from cifar100.data.images import IMAGE_EXTENSIONS, decode_image
from cifar100.data.tensors import DataSplits, ImageSet, split_holdout
from cifar100.errors import ConfigError, DataError
from cifar100.fileio import atomic_path

__all__ = ["load_image_folder"]

FORMAT_VERSION = 1  # bump when the cache's contents or the decoding change
TEST_DIRS = ("test", "val", "valid", "validation")  # the first present is the test split
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})  # plus any '.name'
CHUNK = 256  # images per worker task: amortises the hand-over, still fine-grained for the bar
# Up to this many images are decoded in this process: a pool costs more than it saves there.
SERIAL_LIMIT = 2048

Fetch = Callable[[list[str]], np.ndarray]  # relative paths -> uint8 (N, S, S, 3)


def load_image_folder(
    path: str | Path,
    image_size: int,
    cache_dir: Path,
    test_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> DataSplits:
    """Decode an image folder or tarball into uint8 splits of image_size^2, cached on disk."""
    if not path:
        raise DataError("no image folder given: set data.path to a folder or a .tar/.tar.gz")
    if image_size < 1:
        raise ConfigError(f"data.image_size must be a positive number, got {image_size}")
    src = Path(path).expanduser()
    if src.is_dir():
        listing = _scan_directory(src)
        material = {"kind": "dir", "files": sorted([k, *v] for k, v in listing.files.items())}
        name = src.resolve().name
    elif src.is_file() and tarfile.is_tarfile(src):
        listing, material = None, {"kind": "tar", "sha256": file_digest(src, "sha256")}
        name = re.sub(r"(\.tar(\.\w+)?|\.tgz)$", "", src.name)
    elif src.exists():
        raise DataError(
            f"{src}: not a directory or a tarball (.tar, .tar.gz, .tgz); give an "
            "image folder with one subfolder per class, or a tarball of one"
        )
    else:
        raise DataError(
            f"{src}: no such file or directory; give an image folder (one subfolder "
            "per class) or a .tar/.tar.gz of one"
        )

    start = time.perf_counter()
    key = _cache_key(material, image_size, test_fraction, seed)
    cache_path = Path(cache_dir) / "folders" / f"{key}.npz"
    cached = _read_cache(cache_path) if cache_path.exists() else None
    if cached is None:
        bar = tqdm(desc=f"decoding {name}", unit="img", disable=not progress)
        with bar, _Decoder(image_size, bar) as decoder:
            if listing is None:
                listing = _stream_tarball(src, decoder)
                fetch = decoder.gather
            else:
                fetch = _directory_fetch(src, decoder)
            train, test, meta = _build(src, listing, fetch, test_fraction, seed)
        _write_cache(cache_path, train, test, meta)
    else:
        train, test, meta = cached
    info = {
        "cache": "miss" if cached is None else "hit",
        "cache_path": str(cache_path),
        "image_size": image_size,
        "seconds": round(time.perf_counter() - start, 3),
        **meta,
    }
    return DataSplits(name=name, train=train, test=test, source=str(path), info=info)


# --- listing ----------------------------------------------------------------------------------


@dataclass
class _Listing:
    """Files and folders of a source, as relative POSIX paths (ignored names left out)."""

    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (size, mtime)
    dirs: set[str] = field(default_factory=set)

    def add_file(self, rel: str, size: int, mtime: int) -> None:
        self.files[rel] = (size, mtime)
        self.add_dir(rel.rpartition("/")[0])

    def add_dir(self, rel: str) -> None:
        while rel and rel not in self.dirs:
            self.dirs.add(rel)
            rel = rel.rpartition("/")[0]

    def subdirs(self, d: str) -> list[str]:
        return sorted(x.rpartition("/")[2] for x in self.dirs if x.rpartition("/")[0] == d)

    def files_in(self, d: str) -> list[str]:
        return sorted(x.rpartition("/")[2] for x in self.files if x.rpartition("/")[0] == d)


def _ignored(part: str) -> bool:
    return part.startswith(".") or part.lower() in IGNORED_NAMES


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _scan_directory(root: Path) -> _Listing:
    listing, seen = _Listing(), set()

    def walk(d: Path, rel: str) -> None:
        try:
            st = d.stat()
            if (st.st_dev, st.st_ino) in seen:  # a symlink loop, or a folder linked twice
                return
            seen.add((st.st_dev, st.st_ino))
            listing.add_dir(rel)
            with os.scandir(d) as entries:
                for e in entries:
                    if _ignored(e.name):
                        continue
                    r = f"{rel}/{e.name}" if rel else e.name
                    if e.is_dir():  # follows symlinks, so a linked class folder is read
                        walk(Path(e.path), r)
                    else:
                        s = e.stat()
                        listing.add_file(r, s.st_size, s.st_mtime_ns)
        except OSError as err:
            raise DataError(f"{err.filename or d}: cannot read ({err.strerror})") from err

    walk(root, "")
    return listing


def _member_path(src: Path, m: tarfile.TarInfo) -> str | None:
    """The member's normalised relative path; None if ignored; DataError if unsafe."""
    # Backslashes count as separators too: a Windows-made '..\\evil.jpg' is refused as well.
    name = m.name.replace("\\", "/")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    reason = None
    if name.startswith("/") or name[1:2] == ":":
        reason = "an absolute path"
    elif ".." in parts:
        reason = "a '..' segment in its path"
    elif m.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        reason = "a link"
    elif m.type not in tarfile.REGULAR_TYPES and m.type != tarfile.DIRTYPE:
        reason = "a device, fifo or other special file"
    if reason:
        raise DataError(
            f"{src}: refusing member '{m.name}' ({reason}); a dataset tarball may "
            "hold only plain files and folders under relative paths"
        )
    if not parts or any(_ignored(p) for p in parts):
        return None
    return "/".join(parts)


def _stream_tarball(src: Path, decoder: _Decoder) -> _Listing:
    """List the members and decode every image among them in one pass; nothing touches disk."""
    # One pass: a compressed tarball only reads forwards cheaply, and decoding overlaps the
    # (single-threaded) decompression. Images outside the final layout are decoded in vain,
    # which is cheaper than decompressing twice.
    listing, chunk = _Listing(), []
    with tarfile.open(src) as tar:
        for m in tar:
            rel = _member_path(src, m)
            if rel is None:
                continue
            if m.isdir():
                listing.add_dir(rel)
                continue
            if rel in listing.files:
                raise DataError(
                    f"{src}: member '{rel}' appears twice; which one is meant is "
                    "unclear, so repack the tarball with one copy"
                )
            listing.add_file(rel, m.size, int(m.mtime))
            if _is_image(rel):
                chunk.append((rel, tar.extractfile(m).read(), f"{rel} in {src}"))
                if len(chunk) == CHUNK:
                    decoder.add(chunk)
                    chunk = []
    if chunk:
        decoder.add(chunk)
    return listing


def _directory_fetch(src: Path, decoder: _Decoder) -> Fetch:
    def fetch(paths: list[str]) -> np.ndarray:
        decoder.bar.reset(total=len(paths))
        jobs = ((p, str(src / p), str(src / p)) for p in paths)
        for chunk in iter(lambda: list(islice(jobs, CHUNK)), []):
            decoder.add(chunk)
        return decoder.gather(paths)

    return fetch


# --- layout -----------------------------------------------------------------------------------


def _build(
    src: Path, listing: _Listing, fetch: Fetch, test_fraction: float, seed: int
) -> tuple[ImageSet, ImageSet, dict]:
    """Check the layout, then fetch the decoded images of each split."""
    root = _find_root(listing)
    dirs = {d.lower(): d for d in listing.subdirs(root)}
    test_dir = next((dirs[t] for t in TEST_DIRS if t in dirs), None)
    if "train" in dirs and test_dir is not None:
        train_dir = dirs["train"]
        train_files = _class_files(src, listing, _join(root, train_dir))
        test_files = _class_files(src, listing, _join(root, test_dir))
        _check_same_classes(src, train_files, test_files, train_dir, test_dir)
        classes = sorted(train_files)
        paths, labels = _flatten(train_files, classes)
        test_paths, test_labels = _flatten(test_files, classes)
        images = fetch(paths + test_paths)  # one call: one progress bar, one pool
        train = _image_set(images[: len(paths)], labels, classes)
        test = _image_set(images[len(paths) :], test_labels, classes)
        unused = sorted(set(dirs.values()) - {train_dir, test_dir})
        return (
            train,
            test,
            {"layout": "train/test", "test_folder": test_dir, "ignored_folders": unused},
        )
    if "train" in dirs:
        raise DataError(
            f"{src}: found {_join(root, dirs['train'])}/ but no test/ (or val/) "
            f"beside it; add one, or put the class folders directly in {_show(root)} "
            "to have a test split made"
        )
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
    files = _class_files(src, listing, root)
    classes = sorted(files)
    paths, labels = _flatten(files, classes)
    train, test = split_holdout(_image_set(fetch(paths), labels, classes), test_fraction, seed)
    return train, test, {"layout": "split", "test_fraction": test_fraction, "seed": seed}


def _join(d: str, name: str) -> str:
    return f"{d}/{name}" if d else name


def _show(d: str) -> str:
    return f"{d}/" if d else "the top level"


def _find_root(listing: _Listing) -> str:
    """Descend through wrapping folders: ones holding no images and one folder of folders."""
    root = ""
    while True:
        subs = listing.subdirs(root)
        images = [f for f in listing.files_in(root) if _is_image(f)]
        if len(subs) != 1 or images or not listing.subdirs(_join(root, subs[0])):
            return root
        root = _join(root, subs[0])


def _class_files(src: Path, listing: _Listing, d: str) -> dict[str, list[str]]:
    """Class name -> sorted image paths (recursive) under each subfolder of `d`."""
    classes: dict[str, list[str]] = {c: [] for c in listing.subdirs(d)}
    prefix = f"{d}/" if d else ""
    for rel in listing.files:
        if not rel.startswith(prefix):
            continue
        head, sep, _ = rel[len(prefix) :].partition("/")
        if sep:
            classes[head].append(rel)
        elif _is_image(rel):  # stray non-images (README, LICENSE) beside class folders are fine
            raise DataError(
                f"{src}: image '{rel}' is outside any class folder; move it into "
                "the subfolder named after its class"
            )
    if not classes:
        raise DataError(
            f"{src}: no class folders in {_show(d)}; an image folder needs one "
            "subfolder per class holding its images (e.g. cat/001.jpg)"
        )
    if len(classes) < 2:
        raise DataError(
            f"{src}: only one class folder ({_join(d, next(iter(classes)))}/); a "
            "classifier needs a subfolder for each of at least two classes"
        )
    for c, files in classes.items():
        if not files:
            raise DataError(
                f"{src}: class folder {_join(d, c)}/ holds no images; add some or remove the folder"
            )
        bad = [f for f in files if not _is_image(f)]
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise DataError(
                f"{src}: '{bad[0]}'{more} is not an image file; class folders may "
                f"hold only {' '.join(sorted(IMAGE_EXTENSIONS))}: move or delete it"
            )
        files.sort()
    return classes


def _check_same_classes(
    src: Path, train: dict[str, list[str]], test: dict[str, list[str]], tr: str, te: str
) -> None:
    no_test, no_train = sorted(set(train) - set(test)), sorted(set(test) - set(train))
    if no_test or no_train:
        parts = [
            f"missing from {te}/: {_names(no_test)}" if no_test else "",
            f"missing from {tr}/: {_names(no_train)}" if no_train else "",
        ]
        raise DataError(
            f"{src}: {tr}/ and {te}/ hold different classes "
            f"({'; '.join(p for p in parts if p)}); give both the same class folders"
        )


def _names(names: list[str], limit: int = 10) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _flatten(files: dict[str, list[str]], classes: list[str]) -> tuple[list[str], np.ndarray]:
    paths = [p for c in classes for p in files[c]]
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(files[c]) for c in classes])
    return paths, labels


def _image_set(images: np.ndarray, labels: np.ndarray, classes: list[str]) -> ImageSet:
    return ImageSet(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
        classes=classes,
    )


# --- decoding ---------------------------------------------------------------------------------


def _decode_chunk(
    payloads: list[bytes | str], names: list[str], size: int
) -> tuple[np.ndarray, dict[int, str]]:
    """Decode one task's images (in a worker); failures come back as messages by row."""
    out, errors = np.zeros((len(payloads), size, size, 3), np.uint8), {}
    for i, (payload, name) in enumerate(zip(payloads, names)):
        try:
            out[i] = decode_image(payload, size, name)
        except DataError as e:  # reported only if the image turns out to be in the layout
            errors[i] = str(e)
    return out, errors


class _Decoder:
    """Decodes chunks of (key, path or bytes, name): in this process while there are few, then
    in a pool; `gather` returns the results in any order asked."""

    def __init__(self, size: int, bar: tqdm) -> None:
        self.size, self.bar = size, bar
        self.blocks: list[tuple[list[str], np.ndarray]] = []  # decoded chunks, as they came
        self.count = 0
        self.errors: dict[str, str] = {}
        self.pool: Executor | None = None
        self.pending: dict[Future, list[str]] = {}
        self.workers = _workers()

    def __enter__(self) -> _Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def add(self, chunk: list[tuple[str, bytes | str, str]]) -> None:
        keys, payloads, names = (list(x) for x in zip(*chunk))
        if self.pool is None and self.count >= SERIAL_LIMIT and self.workers > 1:
            self.pool = _pool(self.workers)
        if self.pool is None:
            self._store(keys, *_decode_chunk(payloads, names, self.size))
            return
        # A bounded number of tasks in flight keeps memory flat however large the source is.
        while len(self.pending) >= 2 * self.workers:
            self._collect(wait(self.pending, return_when=FIRST_COMPLETED).done)
        self.pending[self.pool.submit(_decode_chunk, payloads, names, self.size)] = keys

    def gather(self, keys: list[str]) -> np.ndarray:
        self._collect(list(self.pending))
        failed = next((k for k in keys if k in self.errors), None) if self.errors else None
        if failed is not None:
            raise DataError(self.errors[failed])
        # Scatter each block into place: one copy of the images (a concatenate-then-index
        # would be two, and on this scale the copies are most of the cost).
        where = {k: i for i, k in enumerate(keys)}
        out = np.empty((len(keys), self.size, self.size, 3), np.uint8)
        filled = 0
        for block_keys, images in self.blocks:
            rows = [(r, where[k]) for r, k in enumerate(block_keys) if k in where]
            if rows:
                src_rows, dst_rows = zip(*rows)
                out[list(dst_rows)] = images[list(src_rows)]
                filled += len(rows)
        if filled != len(keys):
            raise RuntimeError(f"decoded {filled} of {len(keys)} images")  # a bug, not bad data
        return out

    def _collect(self, futures: Iterable[Future]) -> None:
        for f in futures:
            self._store(self.pending.pop(f), *f.result())

    def _store(self, keys: list[str], images: np.ndarray, errors: dict[int, str]) -> None:
        self.count += len(keys)
        self.blocks.append((keys, images))
        self.errors.update((keys[row], msg) for row, msg in errors.items())
        self.bar.update(len(keys))


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))  # the CPUs this process may use (containers, taskset)
    except AttributeError:
        n = os.cpu_count() or 1
    return min(n, 16)


def _pool(workers: int) -> Executor:
    # Processes: on the real CIFAR-10 tarball threads were slower than one thread (decoding
    # 32x32 JPEGs is mostly Python-level work, serialised by the GIL). fork, not spawn or
    # forkserver: those re-import the caller's __main__ and so fail in a script without a
    # `__main__` guard. Where fork is unavailable or unsafe (macOS, Windows) use threads, which
    # still overlap Pillow's C decoding of larger images.
    if sys.platform.startswith("linux"):
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(workers)


# --- cache ------------------------------------------------------------------------------------


def _cache_key(material: dict, image_size: int, test_fraction: float, seed: int) -> str:
    # Pillow's version is in the key too: another libjpeg may decode slightly differently.
    blob = json.dumps(
        {
            "format": FORMAT_VERSION,
            "pillow": PIL.__version__,
            "image_size": image_size,
            "test_fraction": test_fraction,
            "seed": seed,
            "source": material,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.data)
    return h.hexdigest()


def _write_cache(path: Path, train: ImageSet, test: ImageSet, meta: dict) -> None:
    arrays = {
        "train_images": train.images.numpy(),
        "train_labels": train.labels.numpy(),
        "test_images": test.images.numpy(),
        "test_labels": test.labels.numpy(),
        "classes": np.array(train.classes),
        "meta": np.array(json.dumps(meta)),
    }
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file: savez adds no suffix
            np.savez(f, digest=np.array(_digest(arrays)), **arrays)
    except OSError as e:  # a full disk or read-only cache costs a re-decode next time, no more
        print(
            f"warning: cannot write image-folder cache {path} ({e}); continuing without it",
            file=sys.stderr,
        )


def _read_cache(path: Path) -> tuple[ImageSet, ImageSet, dict] | None:
    """The cached splits, or None (with one warning line) when the file is unusable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "digest"}
            digest = str(z["digest"])
        if _digest(arrays) != digest:
            raise ValueError("its digest does not match its contents")
        classes = [str(c) for c in arrays["classes"]]
        train = _image_set(arrays["train_images"], arrays["train_labels"], classes)
        test = _image_set(arrays["test_images"], arrays["test_labels"], classes)
        return train, test, json.loads(str(arrays["meta"]))
    except Exception as e:
        # Every failure (truncated zip, bad header, missing array, digest mismatch) means the
        # same thing: rebuild. It is reported so that a cache that keeps breaking is noticed.
        print(
            f"warning: image-folder cache {path} is unreadable ({type(e).__name__}: {e}); "
            "rebuilding it",
            file=sys.stderr,
        )
        return None
