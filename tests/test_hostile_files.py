"""Hostile files: names the system refuses, special files (FIFOs, devices, /proc), class folders
named like hidden ones, and small files that decode into a lot of memory. Each is one clear line
(or one warning), never a traceback, a hang or gigabytes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from cifar100 import cli
from synthetic_folders import class_image, write_classes
from tiny_run import train_tiny

LONG_NAME = "a" * 300 + ".png"  # over NAME_MAX (255) on every common file system


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("hostile"))[0]


@pytest.fixture()
def good(tmp_path) -> Path:
    path = tmp_path / "good.png"
    class_image(1, 0, size=16).save(path)
    return path


def _predict(run: Path, capsys, *paths: Path | str) -> tuple[int, list[str], list[str]]:
    """Exit code, stdout lines and stderr lines of `cifar100 predict RUN PATHS`."""
    code = cli.main(["predict", str(run), *map(str, paths)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "unexpected error" not in err
    return code, out.splitlines(), err.splitlines()


# --- 2: an OS error reading one file is that file's error -------------------------------------


def _unreadable(tmp_path: Path, kind: str) -> tuple[Path, int]:
    """A path that the system refuses to open as `kind` says, and the errno it gives."""
    if kind == "name-too-long":
        return tmp_path / LONG_NAME, errno.ENAMETOOLONG
    if kind == "symlink-loop":
        (tmp_path / "loop.png").symlink_to("loop.png")
        return tmp_path / "loop.png", errno.ELOOP
    (tmp_path / "notes").write_text("a file, not a folder")  # not-a-directory
    return tmp_path / "notes" / "x.png", errno.ENOTDIR


@pytest.mark.parametrize("kind", ["name-too-long", "symlink-loop", "not-a-directory"])
def test_predict_reports_an_unreadable_path_and_predicts_the_others(
    run, good, tmp_path, capsys, kind
):
    bad, code = _unreadable(tmp_path, kind)
    status, out, err = _predict(run, capsys, bad, good)
    assert status == 1
    assert len(out) == 1 and out[0].startswith(f"{good}: ")
    assert err == [f"{bad}: error: cannot read file ({os.strerror(code)})"]


@pytest.mark.parametrize("kind", ["name-too-long", "symlink-loop", "not-a-directory"])
def test_decode_image_turns_any_os_error_into_one_data_error(tmp_path, kind):
    from cifar100.data.images import decode_image
    from cifar100.errors import DataError

    bad, code = _unreadable(tmp_path, kind)
    with pytest.raises(DataError) as e:
        decode_image(bad, 8)
    assert str(e.value) == f"{bad}: cannot read file ({os.strerror(code)})"


def test_pillow_errors_stay_image_errors(tmp_path):
    # Pillow raises OSError without an errno about what is inside a file: not a "cannot read".
    from cifar100.data.images import decode_image
    from cifar100.errors import DataError

    whole, cut = tmp_path / "whole.png", tmp_path / "cut.png"
    class_image(0, 0, size=64).save(whole)
    cut.write_bytes(whole.read_bytes()[:-40])
    with pytest.raises(DataError, match=f"^{cut}: not a readable image \\("):
        decode_image(cut, 8)


def test_a_link_that_cannot_be_followed_in_a_class_folder_is_skipped(tmp_path, capsys):
    from cifar100.data.folders import load_image_folder

    root = tmp_path / "set"
    write_classes(root, {"a": 2, "b": 2})
    (root / "a" / "loop.png").symlink_to("loop.png")
    (root / "b" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    splits = load_image_folder(root, 8, tmp_path / "cache", test_fraction=0.5, progress=False)
    assert len(splits.train) + len(splits.test) == 4
    assert splits.info["skipped_files"] == [
        {"path": "a/loop.png", "reason": f"cannot read file ({os.strerror(errno.ELOOP)})"},
        {"path": "b/gone.png", "reason": f"cannot read file ({os.strerror(errno.ENOENT)})"},
    ]
    assert capsys.readouterr().err.count("\n") == 1
