"""The layout of an image folder: the class folders and train/test split found in a listing of
its files, and the uint8 ImageSets built from them."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cifar100.data.images import IMAGE_EXTENSIONS
from cifar100.data.tensors import ImageSet, split_holdout
from cifar100.errors import ConfigError, DataError

__all__ = ["Fetch", "Listing", "build_splits", "image_set", "is_image"]

TEST_DIRS = ("test", "val", "valid", "validation")  # the first present is the test split

Fetch = Callable[[list[str]], np.ndarray]  # relative paths -> uint8 (N, S, S, 3)


@dataclass
class Listing:
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


def is_image(name: str) -> bool:
    """Whether a file name has a suffix of an image format we decode."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def build_splits(
    src: Path, listing: Listing, fetch: Fetch, test_fraction: float, seed: int
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
        _warn_case_twins(src, classes)
        paths, labels = _flatten(train_files, classes)
        test_paths, test_labels = _flatten(test_files, classes)
        images = fetch(paths + test_paths)  # one call: one progress bar, one pool
        train = image_set(images[: len(paths)], labels, classes)
        test = image_set(images[len(paths) :], test_labels, classes)
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
    _warn_case_twins(src, classes)
    paths, labels = _flatten(files, classes)
    train, test = split_holdout(image_set(fetch(paths), labels, classes), test_fraction, seed)
    return train, test, {"layout": "split", "test_fraction": test_fraction, "seed": seed}


def _join(d: str, name: str) -> str:
    return f"{d}/{name}" if d else name


def _show(d: str) -> str:
    return f"{d}/" if d else "the top level"


def _find_root(listing: Listing) -> str:
    """Descend through wrapping folders: ones holding no images and one folder of folders."""
    root = ""
    while True:
        subs = listing.subdirs(root)
        images = [f for f in listing.files_in(root) if is_image(f)]
        if len(subs) != 1 or images or not listing.subdirs(_join(root, subs[0])):
            return root
        root = _join(root, subs[0])


def _class_files(src: Path, listing: Listing, d: str) -> dict[str, list[str]]:
    """Class name -> sorted image paths (recursive) under each subfolder of `d`."""
    classes: dict[str, list[str]] = {c: [] for c in listing.subdirs(d)}
    prefix = f"{d}/" if d else ""
    for rel in listing.files:
        if not rel.startswith(prefix):
            continue
        head, sep, _ = rel[len(prefix) :].partition("/")
        if sep:
            classes[head].append(rel)
        elif is_image(rel):  # stray non-images (README, LICENSE) beside class folders are fine
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
        bad = [f for f in files if not is_image(f)]
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


def _warn_case_twins(src: Path, classes: list[str]) -> None:
    """Warn (once) about class folders whose names differ only in letter case.

    A warning, not an error: "A" and "a" may be two real classes (letters), and they load as two
    here. But where names ignore case (macOS, Windows) the same tarball extracts into one folder,
    and "Cat" beside "cat" is more often one class spelt two ways.
    """
    seen: dict[str, str] = {}
    for c in classes:
        twin = seen.setdefault(c.casefold(), c)
        if twin != c:
            print(
                f"warning: {src}: class folders '{twin}' and '{c}' differ only in letter case: "
                "two classes here, but one folder on macOS and Windows; rename or merge them "
                "if they are one class",
                file=sys.stderr,
            )
            return


def _names(names: list[str], limit: int = 10) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _flatten(files: dict[str, list[str]], classes: list[str]) -> tuple[list[str], np.ndarray]:
    paths = [p for c in classes for p in files[c]]
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(files[c]) for c in classes])
    return paths, labels


def image_set(images: np.ndarray, labels: np.ndarray, classes: list[str]) -> ImageSet:
    """Decoded arrays as an ImageSet of torch tensors."""
    return ImageSet(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
        classes=classes,
    )
