"""load_cifar on synthetic archives in the canonical format: paths, downloads, validation."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import synthetic_cifar as sc
from cifar100.data import cifar, cifar_sources
from cifar100.errors import ChecksumError, DataError, DownloadError
from http_server import serve_directory

C100 = "cifar-100-python.tar.gz"
C10 = "cifar-10-python.tar.gz"


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("archives")
    return {
        "cifar100": sc.make_cifar100_archive(root / C100),
        "cifar10": sc.make_cifar10_archive(root / C10),
    }


@pytest.fixture
def genuine(monkeypatch, archives):
    """Make the synthetic archives the 'published' ones, so downloads verify against them."""
    for name, path in archives.items():
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        monkeypatch.setitem(
            cifar_sources.SOURCES, name, dataclasses.replace(cifar_sources.SOURCES[name], md5=md5)
        )
    monkeypatch.delenv(cifar_sources.MIRROR_ENV, raising=False)


def assert_matches(splits, data: sc.SyntheticCifar) -> None:
    for split, images, labels, coarse in (
        (splits.train, data.train_images, data.train_labels, data.train_coarse),
        (splits.test, data.test_images, data.test_labels, data.test_coarse),
    ):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        np.testing.assert_array_equal(split.images.numpy(), images)
        np.testing.assert_array_equal(split.labels.numpy(), labels)
        assert split.classes == data.classes
        if coarse is None:
            assert split.coarse_labels is None and split.coarse_classes is None
        else:
            np.testing.assert_array_equal(split.coarse_labels.numpy(), coarse)
            assert split.coarse_classes == data.coarse_classes


def extract(archive, dest):
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


# --- where the data comes from ---------------------------------------------------------------


def test_archive_path_round_trips(archives, tmp_path, capsys):
    splits = cifar.load_cifar("cifar100", str(archives["cifar100"]), tmp_path / "cache")
    assert_matches(splits, sc.cifar100_data())
    assert splits.name == "cifar100" and splits.source == str(archives["cifar100"])
    assert splits.info["archive_md5"] == hashlib.md5(archives["cifar100"].read_bytes()).hexdigest()
    # Not the published md5 (a re-pack, say): it loads, and nothing alarming is printed.
    assert splits.info["canonical"] is False
    assert capsys.readouterr().err == ""


def test_synthetic_members_are_python2_pickles(archives):
    """Guard the helper: the loader must be tested on the published form, not Python 3's."""
    with tarfile.open(archives["cifar100"]) as tar:
        body = tar.extractfile("cifar-100-python/train").read()
    assert body.startswith(b"\x80\x02}") and b"cnumpy.core.multiarray\n_reconstruct\n" in body
    assert b"U\x04data" in body and b"_codecs" not in body  # keys as SHORT_BINSTRING


def test_pixels_are_channel_planar(archives, tmp_path):
    """Row layout of the published files: byte c*1024 + y*32 + x is channel c at (y, x)."""
    with tarfile.open(archives["cifar100"]) as tar:
        raw = pickle.load(tar.extractfile("cifar-100-python/train"), encoding="bytes")[b"data"]
    images = cifar.load_cifar("cifar100", archives["cifar100"], tmp_path).train.images
    for i, y, x, c in [(0, 0, 0, 0), (3, 5, 17, 1), (199, 31, 30, 2)]:
        assert images[i, y, x, c].item() == raw[i, c * 1024 + y * 32 + x]


def test_cifar10_archive_and_folder(archives, tmp_path):
    data = sc.cifar10_data()
    splits = cifar.load_cifar("cifar10", archives["cifar10"], tmp_path / "cache")
    assert_matches(splits, data)
    assert len(splits.train) == 200 and splits.classes[0] == "airplane"
    extract(archives["cifar10"], tmp_path / "x")
    assert_matches(cifar.load_cifar("cifar10", tmp_path / "x", tmp_path / "cache"), data)


@pytest.mark.parametrize("level", ["folder", "parent"])
def test_extracted_folder(archives, tmp_path, level):
    root = extract(archives["cifar100"], tmp_path / "x")
    path = root / "cifar-100-python" if level == "folder" else root
    splits = cifar.load_cifar("cifar100", str(path), tmp_path / "cache")
    assert_matches(splits, sc.cifar100_data())
    assert splits.source == str(root / "cifar-100-python")
    assert not (tmp_path / "cache").exists()  # nothing written for a folder


@pytest.mark.parametrize("via", ["base_url", "env"])
def test_download_through_mirror(archives, genuine, tmp_path, monkeypatch, via):
    with serve_directory(archives["cifar100"].parent) as server:
        base = None
        if via == "base_url":
            base = server.base_url
        else:
            monkeypatch.setenv(cifar_sources.MIRROR_ENV, server.base_url + "/")
        cache = tmp_path / "cache"
        splits = cifar.load_cifar("cifar100", None, cache, progress=False, base_url=base)
        assert_matches(splits, sc.cifar100_data())
        assert splits.source == server.url(C100) and (cache / C100).is_file()
        # The second load needs neither the network nor the archive's decoding.
        monkeypatch.setattr(cifar, "_read_archive", pytest.fail)
        again = cifar.load_cifar("cifar100", None, cache, progress=False, base_url=base)
        assert_matches(again, sc.cifar100_data())
        assert server.requests == {f"/{C100}": 1}


def test_mirror_must_serve_the_published_file(archives, tmp_path, monkeypatch):
    monkeypatch.delenv(cifar_sources.MIRROR_ENV, raising=False)
    with serve_directory(archives["cifar100"].parent) as server:
        with pytest.raises(ChecksumError, match=cifar_sources.SOURCES["cifar100"].md5):
            cifar.load_cifar("cifar100", None, tmp_path, progress=False, base_url=server.base_url)
    assert not (tmp_path / C100).exists()


def test_source_url(monkeypatch):
    monkeypatch.delenv(cifar_sources.MIRROR_ENV, raising=False)
    assert cifar_sources.source_url("cifar100") == "https://www.cs.toronto.edu/~kriz/" + C100
    monkeypatch.setenv(cifar_sources.MIRROR_ENV, "http://m/x/")
    assert cifar_sources.source_url("cifar10") == "http://m/x/" + C10
    assert cifar_sources.source_url("cifar10", "http://b") == "http://b/" + C10


@pytest.mark.parametrize("protocol", [2, 5])
def test_python3_repacked_archive_loads(tmp_path, protocol):
    """Re-packed with Python 3 and numpy 2 pickles (numpy._core, _codecs.encode, protocol 5)."""
    data = sc.cifar100_data(30, 20)
    path = sc.write_archive(
        tmp_path / "re.tar.gz",
        sc.cifar100_contents(data),
        pickler=lambda obj: pickle.dumps(obj, protocol=protocol),
    )
    assert_matches(cifar.load_cifar("cifar100", path, tmp_path / "cache"), data)


# --- the decoded cache -----------------------------------------------------------------------


def test_decoded_cache_is_used_and_rebuilt_when_damaged(archives, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    first = cifar.load_cifar("cifar100", archives["cifar100"], cache)
    npz = cache / "decoded" / first.info["decoded_cache"].rsplit("/", 1)[1]
    assert npz.is_file() and [p.name for p in npz.parent.iterdir()] == [npz.name]

    with monkeypatch.context() as m:
        m.setattr(cifar, "_read_archive", pytest.fail)
        assert_matches(
            cifar.load_cifar("cifar100", archives["cifar100"], cache), sc.cifar100_data()
        )

    body = bytearray(npz.read_bytes())
    body[len(body) // 2] ^= 0xFF  # inside the train images: caught by the zip CRC
    npz.write_bytes(bytes(body))
    assert_matches(cifar.load_cifar("cifar100", archives["cifar100"], cache), sc.cifar100_data())
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged" in err and "CRC" in err
    assert npz.read_bytes() != bytes(body)  # rewritten


# --- refusing bad input ----------------------------------------------------------------------


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("pickler", [sc.py2_pickle, pickle.dumps])
def test_malicious_pickle_is_refused_without_running(tmp_path, pickler):
    marker = tmp_path / "pwned"
    contents = sc.cifar100_contents(sc.cifar100_data(10, 10))
    contents["cifar-100-python/train"] = {b"data": Evil(marker)}
    path = sc.write_archive(tmp_path / "evil.tar.gz", contents, pickler=pickler)
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|nt|os)\.system") as e:
        cifar.load_cifar("cifar100", path, tmp_path / "cache")
    assert f"{path}:cifar-100-python/train" in str(e.value)
    assert "CIFAR files hold only arrays and lists" in str(e.value)
    assert not marker.exists()


def test_other_codecs_are_refused(tmp_path):
    contents = sc.cifar100_contents(sc.cifar100_data(10, 10))
    path = sc.write_archive(
        tmp_path / "c.tar.gz",
        contents,
        pickler=lambda obj: pickle.dumps(obj, protocol=2).replace(b"latin1", b"base64"),
    )
    with pytest.raises(
        DataError, match="train: truncated or corrupt .*_codecs.encode with 'base64'"
    ):
        cifar.load_cifar("cifar100", path, tmp_path / "cache")


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_archive_names_it(archives, tmp_path, keep):
    body = archives["cifar100"].read_bytes()
    path = tmp_path / C100
    path.write_bytes(body[: int(len(body) * keep)])
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        cifar.load_cifar("cifar100", path, tmp_path / "cache")
    assert str(path) in str(e.value)
    assert not (tmp_path / "cache" / "decoded").exists()


def test_not_an_archive(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match=f"{path}: truncated or corrupt archive"):
        cifar.load_cifar("cifar100", path, tmp_path / "cache")


def test_wrong_archive_for_the_name(archives, tmp_path):
    with pytest.raises(DataError, match="missing cifar-100-python/train, .*CIFAR-100 python"):
        cifar.load_cifar("cifar100", archives["cifar10"], tmp_path / "cache")


def test_missing_paths_and_names(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        cifar.load_cifar("cifar100", tmp_path / "absent.tar.gz", tmp_path)
    with pytest.raises(DataError, match="not an extracted CIFAR-100 folder"):
        cifar.load_cifar("cifar100", tmp_path, tmp_path)
    with pytest.raises(DataError, match="unknown CIFAR dataset 'mnist'"):
        cifar.load_cifar("mnist", None, tmp_path)


def _drop(key):
    return lambda c: c["cifar-100-python/train"].pop(key)


def _set(member, key, value):
    return lambda c: c[f"cifar-100-python/{member}"].__setitem__(key, value)


BAD = {
    "missing key": (_drop(b"fine_labels"), r"cifar-100-python/train: missing key b'fine_labels'"),
    "missing data": (_drop(b"data"), r"train: missing key b'data'"),
    "missing member": (lambda c: c.pop("cifar-100-python/meta"), r"missing cifar-100-python/meta"),
    "not a dict": (
        lambda c: c.__setitem__("cifar-100-python/test", [1, 2]),
        r"test: expected a dict, got list",
    ),
    "wrong shape": (
        _set("train", b"data", np.zeros((10, 3 * 32 * 31), np.uint8)),
        r"b'data' must be a uint8 array \(N, 3072\), got uint8 \(10, 2976\)",
    ),
    "wrong dtype": (
        _set("train", b"data", np.zeros((10, 3072), np.float32)),
        r"got float32 \(10, 3072\)",
    ),
    "label out of range": (
        _set("train", b"fine_labels", [100] * 10),
        r"b'fine_labels' holds labels outside 0..99",
    ),
    "coarse out of range": (
        _set("test", b"coarse_labels", [-1] * 10),
        r"test: b'coarse_labels' holds labels outside 0..19",
    ),
    "label count": (_set("train", b"fine_labels", [1] * 9), r"has 9 labels for 10 images"),
    "label type": (_set("train", b"fine_labels", [b"a"] * 10), r"must be a list of integers"),
    "names": (
        _set("meta", b"fine_label_names", [b"x"] * 99),
        r"meta: b'fine_label_names' must list 100 class names, got 99",
    ),
    "coarse names": (
        _set("meta", b"coarse_label_names", [b"x"] * 21),
        r"must list 20 class names, got 21",
    ),
    "duplicate names": (
        _set("meta", b"fine_label_names", [f"n{i}".encode() for i in range(99)] + [b"n7"]),
        r"cifar-100-python/meta: b'fine_label_names' lists the class name 'n7' twice",
    ),
    "duplicate coarse names": (
        _set("meta", b"coarse_label_names", [b"same"] * 20),
        r"meta: b'coarse_label_names' lists the class name 'same' twice",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_contents_are_named(tmp_path, case):
    mutate, message = BAD[case]
    contents = sc.cifar100_contents(sc.cifar100_data(10, 10))
    mutate(contents)
    path = sc.write_archive(tmp_path / C100, contents)
    with pytest.raises(DataError, match=message) as e:
        cifar.load_cifar("cifar100", path, tmp_path / "cache")
    assert str(path) in str(e.value)


def test_malformed_folder_names_the_file(archives, tmp_path):
    folder = extract(archives["cifar10"], tmp_path / "x") / "cifar-10-batches-py"
    batch = folder / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:5000])
    with pytest.raises(DataError, match=f"{batch}: truncated or corrupt"):
        cifar.load_cifar("cifar10", folder, tmp_path / "cache")


def test_unreadable_archive_or_member_is_a_data_error(archives, tmp_path, monkeypatch):
    def denied(path, algo="md5"):
        raise PermissionError(13, "Permission denied", str(path))

    with monkeypatch.context() as m:
        m.setattr(cifar, "file_digest", denied)
        with pytest.raises(DataError, match=r"cannot read \(Permission denied\)"):
            cifar.load_cifar("cifar100", archives["cifar100"], tmp_path / "cache")
    folder = extract(archives["cifar10"], tmp_path / "x") / "cifar-10-batches-py"
    real_open = Path.open

    def guarded(self, *args, **kwargs):
        if self.name == "data_batch_4":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", guarded)
    with pytest.raises(DataError, match=f"^{folder / 'data_batch_4'}: cannot read"):
        cifar.load_cifar("cifar10", folder, tmp_path / "cache")


def test_download_is_bounded_by_the_published_size(archives, genuine, tmp_path, monkeypatch):
    small = dataclasses.replace(cifar_sources.SOURCES["cifar100"], size=100_000)
    monkeypatch.setitem(cifar_sources.SOURCES, "cifar100", small)
    size = archives["cifar100"].stat().st_size
    with serve_directory(archives["cifar100"].parent) as server:
        with pytest.raises(DownloadError, match=f"announces {size} bytes, more than the 101000"):
            cifar.load_cifar("cifar100", None, tmp_path, progress=False, base_url=server.base_url)
    assert not (tmp_path / C100).exists()
