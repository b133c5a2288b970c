"""Hostile files: names the system refuses, special files (FIFOs, devices, /proc), class folders
named like hidden ones, and small files that decode into a lot of memory. Each is one clear line
(or one warning), never a traceback, a hang or gigabytes."""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from cifar100 import cli
from cifar100.data.images import HEADER_BYTES
from hostile_images import flat_png, peak_run, png_head, sparse_file, webp_head
from synthetic_folders import ZeroRun, class_image, encode, tar_zero_runs, write_classes

LONG_NAME = "a" * 300 + ".png"  # over NAME_MAX (255) on every common file system


@pytest.fixture(scope="module")
def run(tiny_run_copy) -> Path:
    return tiny_run_copy


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


# --- 4: special files are named for what they are, and never block -----------------------------

# The words each special file is given, after "not a regular file".
FIFO, DEVICE, PROC = "(a FIFO)", "(a character device)", "(size 0, yet not empty"
ENTRIES = ["predict-image", "predict-model", "evaluate-model", "data-folder", "data-cifar",
           "weights", "config"]  # fmt: skip
CLI_SCRIPT = """
import json, resource, signal, sys
# A regression must fail, not hang on a FIFO or fill the memory from /dev/zero.
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
def stop(*_):
    raise TimeoutError("blocked for 20 s")
signal.signal(signal.SIGALRM, stop)
from cifar100 import cli
import contextlib, io
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    signal.alarm(20)
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    signal.alarm(0)
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def _special_paths(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """kind -> (a special file's path, the words that describe it)."""
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    return {"fifo": (str(fifo), FIFO), "device": ("/dev/zero", DEVICE),
            "proc": ("/proc/self/status", PROC)}  # fmt: skip


def _entry_points(run: Path, archive: Path, good: Path, cache: Path, out: Path) -> dict:
    """entry -> (argv with {} for the path, the exit status, how the error line starts)."""
    small = ["--preset", "scratch", "--dataset", "cifar10", "--backbone", "efficientnet_lite0",
             "--set", "model.resize=1", "--no-progress", "--epochs", "1",
             "--cache-dir", str(cache), "--out", str(out)]  # fmt: skip
    data = ["--no-progress", "--cache-dir", str(cache)]
    return {
        "predict-image": (["predict", str(run), "{}", str(good)], 1, "{}: error: "),
        "predict-model": (["predict", "{}", str(good)], 2, "cifar100 predict: error: {}: "),
        "evaluate-model": (["evaluate", "{}"], 2, "cifar100 evaluate: error: {}: "),
        "data-folder": (
            ["data", "--dataset", "folder", "--data", "{}", *data],
            2,
            "cifar100 data: error: {}: ",
        ),
        "data-cifar": (
            ["data", "--dataset", "cifar10", "--data", "{}", *data],
            2,
            "cifar100 data: error: {}: ",
        ),
        "weights": (
            ["train", *small, "--data", str(archive), "--weights", "{}"],
            2,
            "cifar100 train: error: {}: ",
        ),
        "config": (
            ["train", "--config", "{}", "--data", str(archive), *small[2:]],
            2,
            "cifar100 train: error: {}: ",
        ),
    }


@pytest.fixture(scope="module")
def special_results(run, tmp_path_factory) -> dict[tuple[str, str], tuple[int, str, int, str]]:
    """(entry, kind) -> (exit status, stderr, the status and the line start expected), every
    command run in one fresh interpreter with a memory limit and a 20 s alarm per command."""
    tmp = tmp_path_factory.mktemp("special")
    good = tmp / "good.png"
    class_image(1, 0, size=16).save(good)
    archive = run.parent / "c10.tar.gz"
    entries = _entry_points(run, archive, good, run.parent / "cache", tmp / "runs")
    cases, argvs = [], []
    for kind, (path, words) in _special_paths(tmp).items():
        for entry, (argv, status, start) in entries.items():
            cases.append((entry, kind, status, start.format(path) + "not a regular file " + words))
            argvs.append([a.format(path) for a in argv])
    done = subprocess.run(
        [sys.executable, "-c", CLI_SCRIPT, json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    return {
        (entry, kind): (code, err, status, want)
        for (entry, kind, status, want), (code, err) in zip(cases, results)
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fifo", "device", "proc"])
@pytest.mark.parametrize("entry", ENTRIES)
def test_a_special_file_is_one_line_saying_what_it_is(special_results, entry, kind):
    code, err, status, want = special_results[entry, kind]
    assert "Traceback" not in err and "unexpected error" not in err, err
    lines = [line for line in err.splitlines() if not line.startswith("note: ")]
    assert code == status, err
    assert lines and lines[0].startswith(want), err
    assert len(lines) == 1 or entry == "predict-image", err


def test_special_files_in_a_class_folder_are_skipped_saying_what_they_are(tmp_path, capsys):
    from cifar100.data.folders import load_image_folder

    root = tmp_path / "set"
    write_classes(root, {"a": 2, "b": 2})
    os.mkfifo(root / "a" / "fifo.png")
    (root / "a" / "zero.png").symlink_to("/dev/zero")
    (root / "b" / "status.png").symlink_to("/proc/self/status")
    splits = load_image_folder(root, 8, tmp_path / "cache", test_fraction=0.5, progress=False)
    assert len(splits.train) + len(splits.test) == 4
    reasons = {e["path"]: e["reason"] for e in splits.info["skipped_files"]}
    assert reasons["a/fifo.png"] == "not a regular file " + FIFO
    assert reasons["a/zero.png"] == "not a regular file " + DEVICE
    assert reasons["b/status.png"].startswith("not a regular file " + PROC)
    assert capsys.readouterr().err.count("\n") == 1


def test_predict_of_a_folder_reports_a_fifo_in_it(run, good, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    os.mkfifo(folder / "fifo.png")
    good.rename(folder / "good.png")
    status, out, err = _predict(run, capsys, folder)
    assert status == 1 and len(out) == 1
    assert err == [f"{folder / 'fifo.png'}: error: not a regular file {FIFO}"]


def test_a_fifo_in_an_extracted_cifar_folder_is_named(tmp_path):
    import tarfile

    import synthetic_cifar as sc
    from cifar100.data.cifar import load_cifar
    from cifar100.errors import DataError

    with tarfile.open(sc.make_cifar10_archive(tmp_path / "c.tar.gz")) as tar:
        tar.extractall(tmp_path, filter="data")
    member = tmp_path / "cifar-10-batches-py" / "test_batch"
    member.unlink()
    os.mkfifo(member)
    with pytest.raises(DataError) as e:
        load_cifar("cifar10", tmp_path, tmp_path / "cache", progress=False)
    assert str(e.value) == (
        f"{member}: not a regular file {FIFO}; extract cifar-10-python.tar.gz again"
    )


# --- 3: a name starting with '.' is left out with a warning, junk without one ----------------


def _hidden_folder(root: Path) -> Path:
    """Classes a and b, a class folder and an image whose names start with '.', and the
    well-known junk of macOS, Windows, git and thumbnailers, which holds images too."""
    write_classes(root, {"a": 2, "b": 2, ".cats": 2})
    class_image(0, 9).save(root / "a" / ".x.png")
    (root / "a" / ".DS_Store").write_bytes(b"junk")
    (root / "Thumbs.db").write_bytes(b"junk")
    for junk in ("__MACOSX/a/._0000.png", "a/._0001.png", ".git/x.png", "b/.thumbnails/0.png"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        class_image(0, 7).save(root / junk, format="PNG")
    return root


HIDDEN_WARNING = (
    "left out 2 names as hidden, each starting with '.' (.cats/, a/.x.png); rename them "
    "without the dot to use their images"
)


@pytest.mark.parametrize("kind", ["dir", "tar"])
def test_hidden_class_folders_and_images_are_left_out_with_one_warning(tmp_path, capsys, kind):
    from cifar100.data.folders import load_image_folder
    from synthetic_folders import tar_directory

    root = _hidden_folder(tmp_path / "set")
    source = root if kind == "dir" else tar_directory(root, tmp_path / "set.tar.gz")
    prefix = "" if kind == "dir" else "set/"
    for cache in ("miss", "hit"):
        splits = load_image_folder(source, 8, tmp_path / "cache", test_fraction=0.5, progress=False)
        assert splits.info["cache"] == cache and splits.classes == ["a", "b"]
        assert len(splits.train) + len(splits.test) == 4 and splits.info["skipped"] == 0
        assert splits.info["hidden"] == [f"{prefix}.cats/", f"{prefix}a/.x.png"]
        warning = HIDDEN_WARNING.replace(".cats/", f"{prefix}.cats/").replace(" a/", f" {prefix}a/")
        assert capsys.readouterr().err == f"warning: {source}: {warning}\n"


def test_only_junk_is_left_out_without_a_word(tmp_path, capsys):
    from cifar100.data.folders import load_image_folder

    root = _hidden_folder(tmp_path / "set")
    (root / "a" / ".x.png").unlink()
    for f in (root / ".cats").iterdir():
        f.unlink()
    (root / ".cats").rmdir()
    splits = load_image_folder(root, 8, tmp_path / "cache", test_fraction=0.5, progress=False)
    assert splits.info["hidden"] == [] and capsys.readouterr().err == ""


def test_one_hidden_class_folder_reads_in_the_singular(tmp_path, capsys):
    from cifar100.data.folders import load_image_folder

    root = tmp_path / "set"
    write_classes(root, {"a": 2, "b": 2, "..\\..\\x": 2})  # a name made on Windows
    load_image_folder(root, 8, tmp_path / "cache", test_fraction=0.5, progress=False)
    assert capsys.readouterr().err == (
        f"warning: {root}: left out ..\\..\\x/ as hidden, its name starting with '.'; rename "
        "it without the dot to use its images\n"
    )


def test_a_class_left_alone_by_a_hidden_one_says_so(tmp_path):
    from cifar100.data.folders import load_image_folder
    from cifar100.errors import DataError

    root = tmp_path / "set"
    write_classes(root, {"a": 2, ".b": 2})
    with pytest.raises(DataError) as e:
        load_image_folder(root, 8, tmp_path / "cache", progress=False)
    assert str(e.value).startswith(f"{root}: only one class folder (a/)")
    assert "left out as hidden: .b/" in str(e.value)


def test_predict_of_a_folder_warns_about_hidden_images(run, good, tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / ".thumbnails").mkdir(parents=True)
    good.rename(folder / "good.png")
    class_image(2, 0).save(folder / ".hidden.png")
    class_image(2, 0).save(folder / ".thumbnails" / "good.png")  # junk: not a word
    status, out, err = _predict(run, capsys, folder)
    assert status == 0 and [line.split(":")[0] for line in out] == [str(folder / "good.png")]
    assert err == [
        f"warning: {folder}: left out .hidden.png as hidden, its name starting with '.'; "
        "rename it without the dot to use its images"
    ]


# --- 1: no small file takes much memory ------------------------------------------------------

MIB = 1 << 20
BOUND = 400 * MIB  # what any one of these files may add to the peak, all of it decoded pixels
SIDE = 9000  # 81 M pixels: under Pillow's limit (89 M), 324 MB once decoded (4 bytes each)
# Just under what check_file_size lets a SIDE x SIDE image take (HEADER_BYTES + 10 per pixel).
LARGEST = HEADER_BYTES + 10 * SIDE * SIDE - 64
LOAD_SETUP = """
from pathlib import Path
from PIL import Image
from cifar100.data.folders import load_image_folder
Image.init()
"""


def _load(source: Path, cache: Path) -> str:
    return f"load_image_folder({str(source)!r}, 8, Path({str(cache)!r}), progress=False)"


def _good_members() -> list[tuple[str, ZeroRun]]:
    image = encode(class_image(0, 0))
    return [(f"set/{c}/{i}.png", ZeroRun(image, 0)) for c in "ab" for i in range(3)]


def _assert_skipped_with_one_warning(stderr: str, source: Path, paths: list[str]) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    n = len(paths)
    what = f"{n} files that are not readable images" if n > 1 else "1 file that is not a readable"
    assert lines[0].startswith(f"warning: {source}: skipped {what}")
    assert all(p in lines[0] for p in paths[:3])


@pytest.mark.parametrize("count", [1, pytest.param(4, marks=pytest.mark.slow)])
def test_tar_members_that_expand_from_zeros_are_skipped_in_bounded_memory(tmp_path, count):
    # The report: a 0.79 MB .tar.gz whose member, a 9000x9000 PNG header and then zeros up to
    # what that size allows, peaked at 1.84 GB; four of them at 2.64 GB.
    head = png_head(SIDE, SIDE)
    bombs = [(f"set/a/x{i}.png", ZeroRun(head, LARGEST - len(head))) for i in range(count)]
    tarball = tar_zero_runs(tmp_path / "set.tar.gz", [*_good_members(), *bombs], level=6)
    assert tarball.stat().st_size < count * MIB
    growth, message, stderr = peak_run(LOAD_SETUP, _load(tarball, tmp_path / "cache"))
    assert message == "no error"
    assert growth < BOUND, f"peak memory grew by {growth / MIB:.0f} MiB"
    _assert_skipped_with_one_warning(stderr, tarball, [name for name, _ in bombs])
    assert "bytes from" in stderr and "of the compressed tarball" in stderr


def _bombs() -> dict[str, bytes]:
    """name -> the start of a file, to be followed by zeros up to LARGEST bytes: what its
    reader would hold whole. A WebP (Pillow reads it at once), a real 9000x9000 PNG followed by a
    private chunk (Pillow keeps those), and a PNG header followed by zeros."""
    png = flat_png(SIDE, SIDE, end=False)
    chunk = struct.pack(">I", LARGEST - len(png) - 12) + b"prIv"  # its data, then its CRC
    return {"x.webp": webp_head(SIDE, SIDE), "y.png": png + chunk, "z.png": png_head(SIDE, SIDE)}


def _sparse_bombs(folder: Path) -> list[str]:
    """The _bombs as sparse files in `folder`: a few KB on disk each."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, head in _bombs().items():
        sparse_file(folder / name, head, LARGEST)
    return list(_bombs())


@pytest.mark.slow
def test_sparse_files_in_a_folder_are_skipped_in_bounded_memory(tmp_path):
    root = tmp_path / "set"
    write_classes(root, {"a": 3, "b": 3})
    names = _sparse_bombs(root / "a")
    growth, message, stderr = peak_run(LOAD_SETUP, _load(root, tmp_path / "cache"))
    assert message == "no error"
    assert growth < BOUND, f"peak memory grew by {growth / MIB:.0f} MiB"
    _assert_skipped_with_one_warning(stderr, root, [f"a/{n}" for n in names])
    assert "on disk (a sparse file)" in stderr


@pytest.mark.slow
def test_the_same_files_in_a_tarball_are_skipped_in_bounded_memory(tmp_path):
    bombs = [(f"set/a/{n}", ZeroRun(head, LARGEST - len(head))) for n, head in _bombs().items()]
    tarball = tar_zero_runs(tmp_path / "set.tar.gz", [*_good_members(), *bombs])
    growth, message, stderr = peak_run(LOAD_SETUP, _load(tarball, tmp_path / "cache"))
    assert message == "no error"
    assert growth < BOUND, f"peak memory grew by {growth / MIB:.0f} MiB"
    _assert_skipped_with_one_warning(stderr, tarball, [name for name, _ in bombs])


@pytest.mark.slow
@pytest.mark.parametrize(
    "colour, depth", [(6, 8), (4, 8), (0, 16)], ids=["rgba", "grey-alpha", "grey-16-bit"]
)
def test_a_large_flat_image_decodes_within_the_bound(tmp_path, colour, depth):
    # A real image, a few hundred KB: it loads, but its conversion to RGB made 3 or 4 copies
    # of its 9000x9000 pixels (1.5 GB); now only its decoded pixels are held at full size.
    root = tmp_path / "set"
    write_classes(root, {"a": 3, "b": 3})
    (root / "a" / "flat.png").write_bytes(flat_png(SIDE, SIDE, colour, depth))
    assert (root / "a" / "flat.png").stat().st_size < MIB
    growth, message, stderr = peak_run(LOAD_SETUP, _load(root, tmp_path / "cache"))
    assert message == "no error" and stderr == ""
    assert growth < BOUND, f"peak memory grew by {growth / MIB:.0f} MiB"


@pytest.mark.slow
def test_predict_of_such_files_stays_within_the_bound(run, good, tmp_path):
    names = _sparse_bombs(tmp_path)
    (tmp_path / "flat.png").write_bytes(flat_png(SIDE, SIDE, 6))
    files = [str(tmp_path / n) for n in [*names, "flat.png"]] + [str(good)]
    setup = f"""
import json
from cifar100 import load
from cifar100.predict import predict_files
model = load({str(run)!r})
"""
    call = f"print(json.dumps([r.error for r in predict_files(model, {files!r})]), file=sys.stderr)"
    growth, message, stderr = peak_run(setup, call)
    assert message == "no error"
    assert growth < BOUND, f"peak memory grew by {growth / MIB:.0f} MiB"
    errors = json.loads(stderr.splitlines()[-1])
    assert all(errors[: len(names)]) and errors[len(names) :] == [None, None], errors


@pytest.mark.parametrize("kind", ["fifo", "device", "proc"])
def test_class_names_from_a_special_file_are_one_line(tmp_path, kind):
    from cifar100.data.class_names import read_class_names
    from cifar100.errors import CifarError

    path, words = _special_paths(tmp_path)[kind]
    with pytest.raises(CifarError, match="not a regular file " + re.escape(words)):
        read_class_names(path)  # a FIFO blocked here for ever, /dev/zero read without end
