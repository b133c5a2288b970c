"""load_image_folder: layouts, tarballs, the cache, and one clear error per mistake."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cifar100.data.decode_pool as decode_pool
import cifar100.data.folders as folders
from cifar100.data.folders import load_image_folder
from cifar100.errors import ConfigError, DataError
from synthetic_cifar import CIFAR10_CLASSES
from synthetic_folders import (
    class_colour,
    class_image,
    encode,
    image_id,
    tar_directory,
    tar_members,
    write_classes,
    write_split_folder,
)

REAL_TARBALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def _load(path, cache, **kwargs):
    kwargs.setdefault("progress", False)
    return load_image_folder(
        path, image_size=kwargs.pop("image_size", 8), cache_dir=cache, **kwargs
    )


def _check_labels(split) -> None:
    """Every image carries its class's colour (see synthetic_folders.class_image)."""
    images, labels = split.images.numpy(), split.labels.numpy()
    assert images.dtype == np.uint8
    for image, label in zip(images, labels):
        assert (image[1:, 1:] == class_colour(int(label))).all()


def test_train_test_directory(tmp_path):
    root = write_split_folder(
        tmp_path / "pets", {"cat": 4, "dog": 3, "emu": 2}, {"cat": 2, "dog": 2, "emu": 1}
    )
    splits = _load(root, tmp_path / "cache")
    assert splits.name == "pets" and splits.source == str(root)
    assert splits.classes == ["cat", "dog", "emu"]
    assert splits.train.images.shape == (9, 8, 8, 3) and len(splits.test) == 5
    assert splits.train.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2]
    _check_labels(splits.train)
    _check_labels(splits.test)
    assert splits.info["cache"] == "miss" and splits.info["layout"] == "train/test"


def test_val_stands_in_for_test_and_test_wins_over_val(tmp_path):
    root = write_split_folder(tmp_path / "a", {"x": 2, "y": 2}, {"x": 1, "y": 1}, "val")
    splits = _load(root, tmp_path / "cache")
    assert len(splits.test) == 2 and splits.info["test_folder"] == "val"
    write_classes(root / "test", {"x": 3, "y": 3})
    splits = _load(root, tmp_path / "cache")
    assert len(splits.test) == 6 and splits.info["ignored_folders"] == ["val"]


def test_single_tree_is_split_stratified_and_seeded(tmp_path):
    root = tmp_path / "tree"
    write_classes(root, {"a": 10, "b": 20})
    first = _load(root, tmp_path / "c1", test_fraction=0.2, seed=3)
    assert first.info["layout"] == "split"
    assert np.bincount(first.test.labels.numpy()).tolist() == [2, 4]
    assert np.bincount(first.train.labels.numpy()).tolist() == [8, 16]
    _check_labels(first.train)
    _check_labels(first.test)

    def ids(s):
        return sorted((int(label), image_id(im)) for im, label in zip(s.images.numpy(), s.labels))

    again = _load(root, tmp_path / "c2", test_fraction=0.2, seed=3)  # rebuilt, not cached
    assert again.info["cache"] == "miss" and ids(again.test) == ids(first.test)
    other = _load(root, tmp_path / "c2", test_fraction=0.2, seed=4)
    assert ids(other.test) != ids(first.test)
    assert set(ids(first.test)).isdisjoint(ids(first.train))


def test_wrapping_folder_and_ignored_files(tmp_path):
    root = write_split_folder(tmp_path / "outer" / "data", {"x": 2, "y": 2}, {"x": 1, "y": 1})
    for junk in (
        "train/x/.DS_Store",
        "train/x/._0000.png",
        "train/y/Thumbs.db",
        "test/x/desktop.ini",
        ".hidden/z/1.png",
        "README.md",
    ):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_bytes(b"junk")
    (tmp_path / "outer" / "LICENSE").write_text("beside the wrapper: fine")
    splits = _load(tmp_path / "outer", tmp_path / "cache")
    assert splits.classes == ["x", "y"] and (len(splits.train), len(splits.test)) == (4, 2)


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz"])
def test_tarball_matches_directory(tmp_path, suffix):
    root = write_split_folder(tmp_path / "set", {"p": 3, "q": 2}, {"p": 1, "q": 2})
    tarball = tar_directory(root, tmp_path / f"set{suffix}")
    from_dir = _load(root, tmp_path / "cache")
    from_tar = _load(tarball, tmp_path / "cache")
    assert from_tar.name == "set" and from_tar.info["cache"] == "miss"
    for a, b in ((from_dir.train, from_tar.train), (from_dir.test, from_tar.test)):
        assert a.classes == b.classes
        assert (a.images == b.images).all() and (a.labels == b.labels).all()


def test_cache_hit_does_not_decode(tmp_path, monkeypatch):
    tarball = tar_directory(
        write_split_folder(tmp_path / "s", {"a": 2, "b": 2}, {"a": 1, "b": 1}),
        tmp_path / "s.tar.gz",
    )
    first = _load(tarball, tmp_path / "cache")
    cache_files = list((tmp_path / "cache" / "folders").glob("*.npz"))
    assert len(cache_files) == 1 and first.info["cache_path"] == str(cache_files[0])

    def fail(*args, **kwargs):
        raise AssertionError("decoded despite the cache")

    monkeypatch.setattr(decode_pool, "decode_image", fail)
    second = _load(tarball, tmp_path / "cache")
    assert second.info["cache"] == "hit" and second.classes == first.classes
    assert (second.train.images == first.train.images).all()
    assert (second.test.labels == first.test.labels).all()
    assert second.info["layout"] == "train/test"


def test_cache_key_follows_directory_contents_and_options(tmp_path):
    root = tmp_path / "tree"
    write_classes(root, {"a": 3, "b": 3})
    cache = tmp_path / "cache"
    assert _load(root, cache).info["cache"] == "miss"
    assert _load(root, cache).info["cache"] == "hit"
    assert _load(root, cache, image_size=4).info["cache"] == "miss"
    assert _load(root, cache, seed=1).info["cache"] == "miss"
    class_image(0, 99).save(root / "a" / "0000.png")
    os.utime(root / "a" / "0000.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert _load(root, cache).info["cache"] == "miss"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "tamper"])
def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, capsys, damage):
    root = write_split_folder(tmp_path / "s", {"a": 2, "b": 2}, {"a": 1, "b": 1})
    good = _load(root, tmp_path / "cache")
    path = Path(good.info["cache_path"])
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "garbage":
        path.write_bytes(b"\0" * 1000)
    else:  # a valid archive whose images differ from its digest
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["train_images"][0, 0, 0, 0] ^= 1
        np.savez(path, **arrays)
    capsys.readouterr()
    rebuilt = _load(root, tmp_path / "cache")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: image-folder cache")
    assert "rebuilding" in err
    assert rebuilt.info["cache"] == "miss" and (rebuilt.train.images == good.train.images).all()
    assert _load(root, tmp_path / "cache").info["cache"] == "hit"
    assert capsys.readouterr().err == ""
    assert zipfile.is_zipfile(path)


def test_unwritable_cache_warns_and_still_loads(tmp_path, capsys, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    write_classes(tmp_path / "tree", {"a": 2, "b": 2})
    splits = _load(tmp_path / "tree", tmp_path / "cache")
    assert len(splits.train) + len(splits.test) == 4 and splits.info["cache"] == "miss"
    assert "cannot write image-folder cache" in capsys.readouterr().err
    assert not list((tmp_path / "cache").rglob("*.npz"))


@pytest.mark.slow
def test_process_pool_path(tmp_path, monkeypatch):
    # Small limits push a small folder through the worker pool, errors included.
    monkeypatch.setattr(decode_pool, "SERIAL_LIMIT", 4)
    monkeypatch.setattr(folders, "CHUNK", 3)
    root = tmp_path / "tree"
    write_classes(root, {"a": 12, "b": 12, "c": 12})
    tarball = tar_directory(root, tmp_path / "tree.tar")
    for source in (root, tarball):
        splits = _load(source, tmp_path / "cache", test_fraction=0.25)
        assert (len(splits.train), len(splits.test)) == (27, 9)
        _check_labels(splits.train)
        _check_labels(splits.test)
    (root / "b" / "0005.png").write_bytes(b"broken")  # the worker's failure comes back, once
    splits = _load(root, tmp_path / "cache", test_fraction=0.25)
    assert len(splits.train) + len(splits.test) == 35 and splits.info["skipped"] == 1
    with pytest.raises(DataError, match=r"\(b/0005.png: not a format Pillow recognises\)"):
        _load(root, tmp_path / "cache", strict=True)


# --- errors -----------------------------------------------------------------------------------


def test_missing_path_and_non_tarball(tmp_path):
    with pytest.raises(DataError, match="nowhere: no such file or directory"):
        _load(tmp_path / "nowhere", tmp_path / "cache")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt: not a directory or a tarball"):
        _load(tmp_path / "notes.txt", tmp_path / "cache")
    with pytest.raises(DataError, match="no image folder given"):
        _load(None, tmp_path / "cache")


def test_no_class_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders in the top level"):
        _load(tmp_path / "empty", tmp_path / "cache")
    write_classes(tmp_path / "one", {"cat": 2})
    with pytest.raises(DataError, match=r"only one class folder \(cat/\)"):
        _load(tmp_path / "one", tmp_path / "cache")


def test_empty_class_folder(tmp_path):
    root = write_split_folder(tmp_path / "s", {"a": 2, "b": 2}, {"a": 1, "b": 1})
    (root / "test" / "c").mkdir()
    (root / "train" / "c").mkdir()
    (root / "train" / "c" / "Thumbs.db").write_bytes(b"x")  # ignored, so still empty
    with pytest.raises(DataError, match=r"class folder (s/)?train/c/ holds no images"):
        _load(root, tmp_path / "cache")


def test_mismatched_class_lists_name_both_sides(tmp_path):
    root = write_split_folder(tmp_path / "s", {"a": 2, "b": 2, "c": 1}, {"a": 1, "b": 1, "d": 1})
    with pytest.raises(DataError, match=r"missing from test/: c; missing from train/: d"):
        _load(root, tmp_path / "cache")


def test_non_image_and_undecodable_files_are_named_in_strict_mode(tmp_path):
    # Skipping them by default, and the summary of many, are in test_folder_skips.py.
    root = tmp_path / "tree"
    write_classes(root, {"a": 2, "b": 2})
    (root / "b" / "labels.csv").write_text("x")
    one = "1 file in its class folders is not a readable image"
    with pytest.raises(DataError, match=f"tree: {one} \\(b/labels.csv: not an image file\\)"):
        _load(root, tmp_path / "cache", strict=True)
    (root / "b" / "labels.csv").unlink()
    (root / "a" / "0001.png").write_bytes(b"not really a png")
    with pytest.raises(DataError, match=f"tree: {one} \\(a/0001.png: not a format Pillow"):
        _load(root, tmp_path / "cache", strict=True)
    tarball = tar_directory(root, tmp_path / "tree.tar.gz")
    with pytest.raises(DataError, match=f"tree.tar.gz: {one} \\(tree/a/0001.png: not a format"):
        _load(tarball, tmp_path / "cache", strict=True)


def test_stray_image_and_train_without_test(tmp_path):
    root = tmp_path / "tree"
    write_classes(root, {"a": 2, "b": 2})
    class_image(0, 0).save(root / "loose.png")
    with pytest.raises(DataError, match="'loose.png' is outside any class folder"):
        _load(root, tmp_path / "cache")
    root = tmp_path / "half"
    write_classes(root / "train", {"a": 2, "b": 2})
    write_classes(root / "other", {"a": 2, "b": 2})
    with pytest.raises(DataError, match="found train/ but no test/"):
        _load(root, tmp_path / "cache")


def test_bad_test_fraction(tmp_path):
    write_classes(tmp_path / "tree", {"a": 2, "b": 2})
    with pytest.raises(ConfigError, match="test_fraction"):
        _load(tmp_path / "tree", tmp_path / "cache", test_fraction=1.0)


def test_unused_folder_in_tarball_may_hold_anything(tmp_path):
    root = write_split_folder(tmp_path / "s", {"a": 2, "b": 2}, {"a": 1, "b": 1})
    (root / "unlabeled").mkdir()
    (root / "unlabeled" / "bad.jpg").write_bytes(b"never decoded into the result")
    splits = _load(tar_directory(root, tmp_path / "s.tgz"), tmp_path / "cache")
    assert splits.info["ignored_folders"] == ["unlabeled"] and len(splits.train) == 4


@pytest.mark.parametrize(
    "member, reason",
    [
        ("../evil.jpg", "'..' segment"),
        ("/abs/evil.jpg", "absolute path"),
        ("d/../../evil.jpg", "'..' segment"),
        ("link.jpg", "a link"),
    ],
)
def test_unsafe_tarball_members_are_refused(tmp_path, member, reason):
    image = encode(class_image(0, 0))
    members = [("d/a/1.png", image), ("d/b/1.png", image)]
    members.append((member, "d/a/1.png") if member == "link.jpg" else (member, image))
    work = tmp_path / "work"
    work.mkdir()
    tarball = tar_members(work / "evil.tar.gz", members)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(DataError, match=f"refusing member '{member}' \\(.*{reason}"):
        _load(tarball, work / "cache")
    assert sorted(tmp_path.rglob("*")) == before  # nothing extracted, nothing cached
    assert not (tmp_path / "evil.jpg").exists()


def test_duplicate_tarball_member_is_refused(tmp_path):
    image = encode(class_image(0, 0))
    members = [("d/a/1.png", image), ("d/b/1.png", image), ("d/a/1.png", image)]
    with pytest.raises(DataError, match="'d/a/1.png' appears twice"):
        _load(tar_members(tmp_path / "dup.tar", members), tmp_path / "cache")


# --- real data --------------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.slow
def test_real_cifar10_jpeg_tarball(tmp_path):
    if not REAL_TARBALL.exists():
        pytest.skip(f"real data not present: {REAL_TARBALL} (see shared/data/README.md)")
    cache = tmp_path / "cache"
    start = time.perf_counter()
    cold = load_image_folder(REAL_TARBALL, 32, cache, progress=False)
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    warm = load_image_folder(REAL_TARBALL, 32, cache, progress=False)
    warm_s = time.perf_counter() - start
    print(f"\ncifar10-jpeg.tar.gz: cold {cold_s:.2f}s, cached {warm_s:.2f}s")
    assert cold.info["cache"] == "miss" and warm.info["cache"] == "hit"
    assert cold.classes == CIFAR10_CLASSES
    for splits in (cold, warm):
        assert splits.train.images.shape == (50_000, 32, 32, 3)
        assert splits.test.images.shape == (10_000, 32, 32, 3)
        assert np.bincount(splits.train.labels.numpy()).tolist() == [5000] * 10
        assert np.bincount(splits.test.labels.numpy()).tolist() == [1000] * 10
    assert (warm.train.images == cold.train.images).all()
    with tarfile.open(REAL_TARBALL) as tar:  # 32x32 JPEGs pass through exactly as Pillow decodes
        member = tar.extractfile("cifar10-jpeg/test/airplane/0000.jpg").read()
    assert (cold.test.images[0].numpy() == np.array(Image.open(io.BytesIO(member)))).all()
    shutil.rmtree(cache)


# --- damaged tarballs and unreadable sources ----------------------------------------------------


def _tarball(tmp_path, suffix=".tar.gz"):
    root = write_split_folder(tmp_path / "set", {"a": 20, "b": 20}, {"a": 5, "b": 5})
    for png in root.rglob("*.png"):  # incompressible pixels: a cut lands inside the data
        rng = np.random.default_rng(len(str(png)))
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(png)
    return tar_directory(root, tmp_path / f"set{suffix}")


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_tarball_is_one_error_naming_it(tmp_path, keep):
    tarball = _tarball(tmp_path)
    tarball.write_bytes(tarball.read_bytes()[: int(tarball.stat().st_size * keep)])
    with pytest.raises(DataError, match="truncated or corrupt tarball") as e:
        _load(tarball, tmp_path / "cache")
    assert str(e.value).startswith(f"{tarball}: ") and "download or pack it again" in str(e.value)
    assert not (tmp_path / "cache").exists()


def test_damaged_gzip_data_is_one_error(tmp_path):
    tarball = _tarball(tmp_path)
    body = bytearray(tarball.read_bytes())
    body[len(body) // 2 : len(body) // 2 + 64] = bytes(64)
    tarball.write_bytes(bytes(body))
    with pytest.raises(DataError, match=f"^{tarball}: truncated or corrupt tarball"):
        _load(tarball, tmp_path / "cache")


def test_plain_tar_cut_or_damaged_is_not_read_quietly_short(tmp_path):
    # tarfile stops without a word at a damaged header, or where a file cut at a block ends.
    tarball = _tarball(tmp_path, ".tar")
    body = tarball.read_bytes()
    with tarfile.open(tarball) as tar:
        middle = tar.getmembers()[len(tar.getmembers()) // 2].offset
    tarball.write_bytes(body[:middle])
    with pytest.raises(DataError, match="truncated or corrupt tarball.*without the end marker"):
        _load(tarball, tmp_path / "cache")
    tarball.write_bytes(body[:middle] + b"x" * 512 + body[middle + 512 :])
    with pytest.raises(DataError, match=f"a damaged member header at byte {middle}"):
        _load(tarball, tmp_path / "cache")
    tarball.write_bytes(body)
    assert len(_load(tarball, tmp_path / "cache").train) == 40


def test_unreadable_tarball_is_a_data_error(tmp_path, monkeypatch):
    tarball = _tarball(tmp_path)

    def denied(path, algo="md5"):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(folders, "file_digest", denied)
    with pytest.raises(DataError, match=f"^{tarball}: cannot read \\(Permission denied\\)"):
        _load(tarball, tmp_path / "cache")


def test_class_folders_differing_in_case_are_warned_about(tmp_path, capsys):
    root = tmp_path / "pets"
    write_classes(root, {"Cat": 2, "cat": 2, "dog": 2})
    tarball = tar_directory(root, tmp_path / "pets.tar")
    for source in (root, tarball, root):  # the third load, from the cache, warns as well
        splits = _load(source, tmp_path / "cache", test_fraction=0.5)
        assert splits.classes == ["Cat", "cat", "dog"]  # still three classes here
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"warning: {source}: class folders")
        assert "'Cat' and 'cat' differ only in letter case" in err
    write_classes(tmp_path / "fine", {"cat": 2, "dog": 2})
    _load(tmp_path / "fine", tmp_path / "cache")
    assert capsys.readouterr().err == ""
