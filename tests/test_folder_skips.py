"""Image folders holding files that are not readable images: all found first, then skipped with
one warning, or refused with one error in strict mode (data.strict, --strict)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cifar100 import cli
from cifar100.cli.parser import build_parser
from cifar100.cli.settings_flags import resolve_config
from cifar100.data.folders import load_image_folder
from cifar100.data.images import HEADER_BYTES
from cifar100.errors import DataError
from synthetic_folders import class_colour, class_image, encode, tar_directory, write_classes

# The unreadable files written by _bad_folder, by path, with the start of each one's reason.
BAD = {
    "a/empty.png": "",  # zero bytes (a directory's file and a tar member word it differently)
    "a/readme.txt": "not an image file",
    "b/broken.jpg": "",  # a JPEG cut in half: Pillow's own words
    "b/huge.png": "4195390 bytes, more than a 8x8 image can take",  # a header that lies
    "b/notes.pdf": "not an image file",
}


def _bad_folder(root: Path) -> Path:
    """root/a and root/b with 4 good images each, and the BAD files among them."""
    write_classes(root, {"a": 4, "b": 4})
    (root / "a" / "readme.txt").write_text("how these were collected")
    (root / "a" / "empty.png").write_bytes(b"")
    jpeg = encode(class_image(1, 9, size=64), "JPEG")
    (root / "b" / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "b" / "notes.pdf").write_bytes(b"%PDF-1.4")
    # An 8x8 PNG followed by more zeros than its pixels explain: refused from its header.
    (root / "b" / "huge.png").write_bytes(encode(class_image(1, 8)) + bytes(HEADER_BYTES + 1000))
    return root


@pytest.fixture(params=["dir", "tar"])
def source(request, tmp_path) -> tuple[Path, str]:
    """The folder, or a .tar.gz of it; and the prefix its member paths carry."""
    root = _bad_folder(tmp_path / "set")
    if request.param == "dir":
        return root, ""
    return tar_directory(root, tmp_path / "set.tar.gz"), "set/"


def _load(path, cache, **kwargs):
    return load_image_folder(path, 8, cache, test_fraction=0.25, progress=False, **kwargs)


def _one_line(text: str) -> str:
    assert text.count("\n") == 1 and text.endswith("\n"), text
    return text[:-1]


def test_default_skips_them_all_with_one_warning(source, tmp_path, capsys):
    path, prefix = source
    splits = _load(path, tmp_path / "cache")
    assert splits.classes == ["a", "b"] and len(splits.train) + len(splits.test) == 8
    for split in (splits.train, splits.test):  # the good images, each with its own label
        for image, label in zip(split.images.numpy(), split.labels.numpy()):
            assert (image[1:, 1:] == class_colour(int(label))).all()
    assert splits.info["skipped"] == 5
    recorded = splits.info["skipped_files"]
    assert [e["path"] for e in recorded] == [prefix + p for p in BAD]
    assert all(e["reason"].startswith(BAD[e["path"][len(prefix) :]]) for e in recorded)
    assert all(e["reason"] and "\n" not in e["reason"] for e in recorded)

    warning = _one_line(capsys.readouterr().err)
    assert warning.startswith(f"warning: {path}: skipped 5 files that are not readable images (")
    assert warning.endswith("; and 2 more); --strict (data.strict) refuses them instead")
    first_three = "; ".join(f"{e['path']}: {e['reason']}" for e in recorded[:3])
    assert f"({first_three}; and 2 more)" in warning
    assert f"{prefix}a/readme.txt: not an image file" in warning
    assert f"{prefix}b/notes.pdf" not in warning  # beyond the first few


def test_strict_refuses_once_naming_them_all(source, tmp_path):
    path, prefix = source
    with pytest.raises(DataError) as e:
        _load(path, tmp_path / "cache", strict=True)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(
        f"{path}: 5 files in its class folders are not readable images ({prefix}a/empty.png: "
    )
    for p, reason in BAD.items():
        assert f"{prefix}{p}: {reason}" in message
    assert "; and " not in message  # all five named
    assert message.endswith(
        "move or delete them, or leave out --strict (data.strict) to skip them with a warning"
    )


def test_a_cache_hit_warns_and_refuses_as_the_miss_did(source, tmp_path, capsys):
    path, _ = source
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="5 files in its class folders"):
        _load(path, cache, strict=True)  # refused, but the decoded folder is cached
    assert capsys.readouterr().err == ""
    hit = _load(path, cache)
    assert hit.info["cache"] == "hit" and hit.info["skipped"] == 5
    warning = _one_line(capsys.readouterr().err)
    assert "skipped 5 files that are not readable images" in warning
    again = _load(path, cache)
    assert again.info["skipped_files"] == hit.info["skipped_files"]
    assert capsys.readouterr().err == warning + "\n"
    with pytest.raises(DataError, match="5 files in its class folders"):
        _load(path, cache, strict=True)


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("kind", ["dir", "tar"])
def test_a_class_left_without_readable_images_is_an_error(tmp_path, kind, strict):
    root = tmp_path / "set"
    write_classes(root, {"a": 2, "b": 2})
    (root / "c").mkdir()
    (root / "c" / "0000.jpg").write_bytes(b"not a jpeg")  # decoding empties it
    (root / "d").mkdir()
    (root / "d" / "readme.txt").write_text("only this")  # empty before any decoding
    source = root if kind == "dir" else tar_directory(root, tmp_path / "set.tar")
    prefix = "" if kind == "dir" else "set/"
    with pytest.raises(DataError) as e:
        _load(source, tmp_path / "cache", strict=strict)
    assert str(e.value) == (
        f"{source}: class folder {prefix}d/ holds no readable images "
        f"({prefix}d/readme.txt: not an image file); add some or remove the folder"
    )
    (root / "d" / "readme.txt").unlink()
    (root / "d").rmdir()
    source = root if kind == "dir" else tar_directory(root, tmp_path / "set.tar")
    with pytest.raises(DataError) as e:
        _load(source, tmp_path / "cache", strict=strict)
    assert str(e.value) == (
        f"{source}: class folder {prefix}c/ holds no readable images "
        f"({prefix}c/0000.jpg: not a format Pillow recognises); add some or remove the folder"
    )


def test_train_test_layout_skips_in_both_splits(tmp_path, capsys):
    root = tmp_path / "set"
    write_classes(root / "train", {"a": 3, "b": 3})
    write_classes(root / "test", {"a": 2, "b": 2}, start=1000)
    (root / "train" / "a" / "bad.png").write_bytes(b"")
    (root / "test" / "b" / "labels.csv").write_text("x")
    splits = load_image_folder(root, 8, tmp_path / "cache", progress=False)
    assert (len(splits.train), len(splits.test)) == (6, 4)
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert splits.test.labels.tolist() == [0, 0, 1, 1]
    assert [e["path"] for e in splits.info["skipped_files"]] == [
        "test/b/labels.csv",
        "train/a/bad.png",
    ]
    assert "skipped 2 files" in _one_line(capsys.readouterr().err)


def test_ignored_names_and_unused_folders_are_not_reported(tmp_path, capsys):
    root = tmp_path / "set"
    write_classes(root / "train", {"a": 2, "b": 2})
    write_classes(root / "test", {"a": 1, "b": 1})
    for junk in ("train/a/.DS_Store", "train/b/Thumbs.db", "unlabeled/x.jpg", "README.md"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_bytes(b"junk")
    for source in (root, tar_directory(root, tmp_path / "set.tgz")):
        splits = load_image_folder(source, 8, tmp_path / "cache", progress=False, strict=True)
        assert splits.info["skipped"] == 0 and splits.info["skipped_files"] == []
        assert len(splits.train) == 4
    assert capsys.readouterr().err == ""


def test_one_skipped_file_reads_in_the_singular(tmp_path, capsys):
    root = tmp_path / "set"
    write_classes(root, {"a": 2, "b": 2})
    (root / "b" / "notes.txt").write_text("x")
    _load(root, tmp_path / "cache")
    assert _one_line(capsys.readouterr().err) == (
        f"warning: {root}: skipped 1 file that is not a readable image (b/notes.txt: not an "
        "image file); --strict (data.strict) refuses them instead"
    )
    with pytest.raises(DataError, match=r"1 file in its class folders is not a readable image"):
        _load(root, tmp_path / "cache", strict=True)


# --- the command line ---------------------------------------------------------------------------


def test_data_command_strict_exits_2_with_one_line(tmp_path, capsys):
    root = _bad_folder(tmp_path / "set")
    argv = ["data", "--dataset", "folder", "--data", str(root), "--no-progress",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert cli.main([*argv, "--strict"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert _one_line(err).startswith(f"cifar100 data: error: {root}: 5 files in its class folders")
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert out.startswith("set: ") and "2 classes" in out
    assert _one_line(err).startswith(f"warning: {root}: skipped 5 files")


def test_train_strict_flag_sets_data_strict(capsys):
    parser = build_parser()
    args = parser.parse_args(["train", "--dataset", "folder", "--data", "x", "--strict"])
    assert resolve_config(args).data.strict is True
    args = parser.parse_args(["train", "--dataset", "folder", "--data", "x"])
    assert resolve_config(args).data.strict is False
    args = parser.parse_args(["train", "--set", "data.strict=yes"])
    assert resolve_config(args).data.strict is True
    for command in ("train", "data"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "--strict refuse an image folder holding files that are not readable" in help_text
        assert "instead of skipping them with a warning (data.strict)" in help_text
