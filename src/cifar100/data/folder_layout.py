"""The layout of an image folder: the class folders and train/test split found in a listing of
its files, and the uint8 ImageSets built from them.

Files in class folders that are not readable images (a readme.txt, a corrupt JPEG) are all
collected first, then skipped with one warning or, in strict mode, refused with one error
(`report_skipped`), rather than stopping the load at each in turn.
"""

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

__all__ = [
    "Fetch",
    "Listing",
    "build_splits",
    "image_set",
    "is_image",
    "report_skipped",
    "warn_case_twins",
]

TEST_DIRS = ("test", "val", "valid", "validation")  # the first present is the test split
NOT_AN_IMAGE = "not an image file"  # the reason given for a skipped non-image
WARN_NAMES, ERROR_NAMES = 3, 8  # skipped files named in the warning, in the strict error

# relative paths -> (uint8 (N, S, S, 3) of those that decoded, in order; {path: reason} of the
# others, the reason a short phrase without the file's name)
Fetch = Callable[[list[str]], tuple[np.ndarray, dict[str, str]]]


@dataclass
class Listing:
    """Files and folders of a source, as relative POSIX paths (ignored names left out)."""

    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (size, mtime)
    dirs: set[str] = field(default_factory=set)
    # Names starting with '.' that were left out: folders ('x/') holding images, and images.
    hidden: set[str] = field(default_factory=set)

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
    """Check the layout, then fetch the decoded images of each split.

    Files of the class folders that are not readable images are left out and listed in the
    meta's "skipped_files" ({"path", "reason"} each, by path); what to make of them is
    `report_skipped`'s to say. A class left with no images is an error here.
    """
    root = _find_root(listing)
    dirs = {d.lower(): d for d in listing.subdirs(root)}
    test_dir = next((dirs[t] for t in TEST_DIRS if t in dirs), None)
    skipped: dict[str, str] = {}
    if "train" in dirs and test_dir is not None:
        train_dir = dirs["train"]
        train_files = _class_files(src, listing, _join(root, train_dir), skipped)
        test_files = _class_files(src, listing, _join(root, test_dir), skipped)
        _check_same_classes(src, train_files, test_files, train_dir, test_dir)
        classes = sorted(train_files)
        paths, labels = _flatten(train_files, classes)
        test_paths, test_labels = _flatten(test_files, classes)
        images, failed = fetch(paths + test_paths)  # one call: one progress bar, one pool
        skipped.update(failed)
        labels, paths = _readable(src, _join(root, train_dir), classes, paths, labels, skipped)
        test_labels, test_paths = _readable(
            src, _join(root, test_dir), classes, test_paths, test_labels, skipped
        )
        train = image_set(images[: len(labels)], labels, classes, paths)
        test = image_set(images[len(labels) :], test_labels, classes, test_paths)
        unused = sorted(set(dirs.values()) - {train_dir, test_dir})
        hidden = _hidden(listing, _join(root, train_dir)) + _hidden(listing, _join(root, test_dir))
        return (
            train,
            test,
            {
                "layout": "train/test",
                "test_folder": test_dir,
                "ignored_folders": unused,
                "skipped_files": _entries(skipped),
                "hidden": hidden,
            },
        )
    if "train" in dirs:
        raise DataError(
            f"{src}: found {_join(root, dirs['train'])}/ but no test/ (or val/) "
            f"beside it; add one, or put the class folders directly in {_show(root)} "
            "to have a test split made"
        )
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
    files = _class_files(src, listing, root, skipped)
    classes = sorted(files)
    paths, labels = _flatten(files, classes)
    images, failed = fetch(paths)
    skipped.update(failed)
    labels, paths = _readable(src, root, classes, paths, labels, skipped)
    train, test = split_holdout(image_set(images, labels, classes, paths), test_fraction, seed)
    meta = {"layout": "split", "test_fraction": test_fraction, "seed": seed}
    return (
        train,
        test,
        {**meta, "skipped_files": _entries(skipped), "hidden": _hidden(listing, root)},
    )


def report_skipped(src: Path, skipped: list[dict], strict: bool) -> None:
    """One warning line naming the skipped files or, if `strict`, one DataError refusing them."""
    if not skipped:
        return
    n = len(skipped)
    files = f"{n} files" if n > 1 else "1 file"
    what = "are not readable images" if n > 1 else "is not a readable image"
    if strict:
        raise DataError(
            f"{src}: {files} in its class folders {what} ({_skip_list(skipped, ERROR_NAMES)}); "
            f"move or delete {'them' if n > 1 else 'it'}, or leave out --strict (data.strict) "
            "to skip them with a warning"
        )
    print(
        f"warning: {src}: skipped {files} that {what} ({_skip_list(skipped, WARN_NAMES)}); "
        "--strict (data.strict) refuses them instead",
        file=sys.stderr,
    )


def _hidden(listing: Listing, d: str) -> list[str]:
    """What was left out as hidden in or under folder `d`: would-be classes and images."""
    prefix = f"{d}/" if d else ""
    return sorted(h for h in listing.hidden if h.startswith(prefix))


def _skip_list(skipped: list[dict], limit: int) -> str:
    named = "; ".join(f"{e['path']}: {e['reason']}" for e in skipped[:limit])
    return named + (f"; and {len(skipped) - limit} more" if len(skipped) > limit else "")


def _entries(skipped: dict[str, str]) -> list[dict]:
    return [{"path": p, "reason": skipped[p]} for p in sorted(skipped)]


def _readable(
    src: Path, d: str, classes: list[str], paths: list[str], labels: np.ndarray, skipped: dict
) -> tuple[np.ndarray, list[str]]:
    """The labels and paths of the images that decoded; an error for a class none of whose did."""
    if not skipped:
        return labels, paths
    kept = np.array([p not in skipped for p in paths], bool)
    labels = labels[kept]
    for c, count in zip(classes, np.bincount(labels, minlength=len(classes))):
        if count == 0:
            raise _unreadable_class(src, _join(d, c), skipped)
    return labels, [p for p, k in zip(paths, kept.tolist()) if k]


def _unreadable_class(src: Path, folder: str, skipped: dict[str, str]) -> DataError:
    entries = [e for e in _entries(skipped) if e["path"].startswith(f"{folder}/")]
    return DataError(
        f"{src}: class folder {folder}/ holds no readable images "
        f"({_skip_list(entries, WARN_NAMES)}); add some or remove the folder"
    )


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


def _class_files(
    src: Path, listing: Listing, d: str, skipped: dict[str, str]
) -> dict[str, list[str]]:
    """Class name -> sorted image paths (recursive) under each subfolder of `d`; the other
    files there go into `skipped`."""
    classes: dict[str, list[str]] = {c: [] for c in listing.subdirs(d)}
    prefix = f"{d}/" if d else ""
    for rel in listing.files:
        if not rel.startswith(prefix):
            continue
        head, sep, _ = rel[len(prefix) :].partition("/")
        if sep and is_image(rel):
            classes[head].append(rel)
        elif sep:
            skipped[rel] = NOT_AN_IMAGE
        elif is_image(rel):  # stray non-images (README, LICENSE) beside class folders are fine
            raise DataError(
                f"{src}: image '{rel}' is outside any class folder; move it into "
                "the subfolder named after its class"
            )
    hidden = [h for h in _hidden(listing, d) if h.endswith("/") and "/" not in h[len(prefix) : -1]]
    aside = f" (left out as hidden: {', '.join(hidden)}; rename without the dot)" if hidden else ""
    if not classes:
        raise DataError(
            f"{src}: no class folders in {_show(d)}{aside}; an image folder needs one "
            "subfolder per class holding its images (e.g. cat/001.jpg)"
        )
    if len(classes) < 2:
        raise DataError(
            f"{src}: only one class folder ({_join(d, next(iter(classes)))}/){aside}; a "
            "classifier needs a subfolder for each of at least two classes"
        )
    for c, files in classes.items():
        if not files and any(p.startswith(f"{_join(d, c)}/") for p in skipped):
            raise _unreadable_class(src, _join(d, c), skipped)
        if not files:
            raise DataError(
                f"{src}: class folder {_join(d, c)}/ holds no images; add some or remove the folder"
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


def warn_case_twins(src: Path, classes: list[str]) -> None:
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


def image_set(
    images: np.ndarray, labels: np.ndarray, classes: list[str], paths: list[str] | None = None
) -> ImageSet:
    """Decoded arrays as an ImageSet of torch tensors (`paths`: each image's file)."""
    return ImageSet(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
        classes=classes,
        paths=paths,
    )
