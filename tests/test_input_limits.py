"""Hostile inputs: small files that declare gigabytes are refused before they are read, in
bounded memory, with one line naming the file (and member); damaged weights are one clear error.

The files are real and built here: gzip tarballs streamed from runs of zeros, sparse files, an
HDF5 file with a huge unwritten dataset, a zip bomb. Peak memory is measured in a fresh
interpreter (ru_maxrss), against the member's size.
"""

from __future__ import annotations

import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import synthetic_cifar as sc
from cifar100.data import cifar, cifar_sources
from cifar100.data.folders import load_image_folder
from cifar100.data.images import HEADER_BYTES
from cifar100.errors import DataError, ModelError
from cifar100.models.efficientnet_lite import EfficientNetLite, load_efficientnet_lite_weights
from cifar100.models.resnet_v2 import load_keras_resnet50v2_h5
from cifar100.weights import keras_h5
from cifar100.weights.efficientnet_lite import file_key
from hostile_images import peak_growth, png_head, sparse_file
from synthetic_folders import ZeroRun, class_image, encode, tar_zero_runs, write_classes

h5py = pytest.importorskip("h5py", reason="reading Keras weights needs h5py")

GIB = 1 << 30
MIB = 1 << 20


FOLDER_SETUP = """
from pathlib import Path
from PIL import Image
from cifar100.data.folders import load_image_folder
Image.init()
"""


def _load_call(source: Path, cache: Path) -> str:
    # strict: the refusal names the file and its reason (by default it is skipped with a warning)
    args = f"{str(source)!r}, 8, Path({str(cache)!r}), progress=False, strict=True"
    return f"load_image_folder({args})"


ONE_REFUSED = "1 file in its class folders is not a readable image"


def _images(*folders: str) -> list[tuple[str, ZeroRun]]:
    """Two small real images in each of `folders` (tarball member paths)."""
    image = encode(class_image(0, 0))
    return [(f"{folder}/{i}.png", ZeroRun(image, 0)) for folder in folders for i in range(2)]


# --- images in tarballs and folders ------------------------------------------------------------


@pytest.mark.slow
def test_tar_member_declaring_gigabytes_is_refused_unread(tmp_path):
    # The reported case: a few MB of .tar.gz whose one image member is a GB of zeros.
    bomb = ZeroRun(png_head(64, 64), GIB)
    tarball = tar_zero_runs(
        tmp_path / "set.tar.gz", [*_images("set/a", "set/b"), ("set/a/x.png", bomb)]
    )
    assert tarball.stat().st_size < 8 * MIB
    growth, message = peak_growth(FOLDER_SETUP, _load_call(tarball, tmp_path / "cache"))
    assert growth < 256 * MIB, f"peak memory grew by {growth / MIB:.0f} MiB"
    assert message.startswith(
        f"DataError: {tarball}: {ONE_REFUSED} (set/a/x.png: {GIB + 41} bytes, more than"
    )
    assert "64x64 image" in message and "\n" not in message


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    "head, message",
    [
        (png_head(64, 64), "more than a 64x64 image can take"),
        (png_head(10_000, 10_000), "(10000x10000 = 100000000 pixels, over the limit of"),
        (png_head(100_000, 100_000), "(10000000000 pixels, over the limit of"),
        (b"\0" * 64, "(set/b/x.png: no image header in its first 4 MiB)"),
    ],
    ids=["oversized", "bomb", "bomb-for-pillow", "no-header"],
)
def test_refused_member_is_an_error_only_inside_the_layout(tmp_path, head, message):
    big = HEADER_BYTES + MIB
    folders = ("set/train/a", "set/train/b", "set/test/a", "set/test/b")
    members = [*_images(*folders), ("set/unlabeled/x.png", ZeroRun(head, big))]
    splits = load_image_folder(tar_zero_runs(tmp_path / "ok.tgz", members), 8, tmp_path / "c")
    assert splits.info["ignored_folders"] == ["unlabeled"] and len(splits.train) == 4
    members = [*_images("set/a", "set/b"), ("set/b/x.png", ZeroRun(head, big))]
    tarball = tar_zero_runs(tmp_path / "bad.tgz", members)
    with pytest.raises(DataError) as e:
        load_image_folder(tarball, 8, tmp_path / "c", progress=False, strict=True)
    assert str(e.value).startswith(f"{tarball}: {ONE_REFUSED} (set/b/x.png: ")
    assert message in str(e.value)
    assert str(e.value).count(str(Image.MAX_IMAGE_PIXELS)) <= 1


@pytest.mark.slow
def test_many_large_members_are_not_held_at_once(tmp_path):
    # 96 members of 4 MiB each (no header check at that size): decoded a bounded chunk at a time.
    members = [(f"set/a/{i:03d}.png", ZeroRun(b"", HEADER_BYTES)) for i in range(96)]
    tarball = tar_zero_runs(tmp_path / "many.tar.gz", [*_images("set/a", "set/b"), *members])
    growth, message = peak_growth(FOLDER_SETUP, _load_call(tarball, tmp_path / "cache"))
    assert growth < 192 * MIB, f"peak memory grew by {growth / MIB:.0f} MiB"
    assert message.startswith(f"DataError: {tarball}: 96 files in its class folders are not")
    assert "(set/a/000.png: not a format Pillow recognises; " in message


@pytest.mark.slow
def test_image_file_declaring_gigabytes_in_a_folder_is_refused_unread(tmp_path):
    root = tmp_path / "set"
    write_classes(root, {"a": 2, "b": 2})
    # A 64x64 PNG whose first chunk after IHDR declares a GB: Pillow reads it whole to skip it.
    path = sparse_file(root / "a" / "x.png", png_head(64, 64, b"zzZz", GIB), GIB + 64)
    growth, message = peak_growth(FOLDER_SETUP, _load_call(root, tmp_path / "cache"))
    assert growth < 256 * MIB, f"peak memory grew by {growth / MIB:.0f} MiB"
    assert message.startswith(f"DataError: {root}: {ONE_REFUSED} (a/x.png: no image header in")
    path.unlink()
    path = sparse_file(root / "a" / "x.png", png_head(64, 64), GIB + 64)  # data appended
    with pytest.raises(DataError, match=f"a/x.png: {GIB + 64} bytes, more than a 64x64 image"):
        load_image_folder(root, 8, tmp_path / "cache", progress=False, strict=True)


@pytest.mark.slow
def test_large_real_images_still_load(tmp_path):
    """Files over HEADER_BYTES that are what they say: noise as PNG, lossless WebP, q100 JPEG."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (1300, 1300, 3), dtype=np.uint8))
    root = tmp_path / "set"
    write_classes(root, {"a": 1, "b": 1})
    noise.save(root / "a" / "big.png")
    noise.save(root / "a" / "big.webp", lossless=True, method=0)
    noise.save(root / "b" / "big.jpg", quality=100, subsampling=0)
    assert all(p.stat().st_size > HEADER_BYTES for p in root.glob("*/big.*"))
    tarball = tmp_path / "set.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(root, arcname="set")
    for source in (root, tarball):
        splits = load_image_folder(source, 8, tmp_path / "c", test_fraction=0.4, progress=False)
        assert len(splits.train) + len(splits.test) == 5


# --- CIFAR pickles -----------------------------------------------------------------------------


def _binstring_pickle(size: int) -> tuple[bytes, bytes]:
    """Head and tail of a protocol-2 pickle of {b"data": <size zero bytes>} (a BINSTRING)."""
    return b"\x80\x02}q\x00U\x04dataq\x01T" + struct.pack("<i", size), b"q\x02s."


@pytest.mark.slow
def test_cifar_folder_member_declaring_gigabytes_is_refused_unread(tmp_path):
    archive = sc.make_cifar10_archive(tmp_path / "c.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    folder = tmp_path / "cifar-10-batches-py"
    head, tail = _binstring_pickle(3 * GIB // 2)
    sparse_file(folder / "test_batch", head, len(head) + 3 * GIB // 2 + len(tail), tail)
    setup = "from pathlib import Path\nfrom cifar100.data.cifar import load_cifar"
    call = f"load_cifar('cifar10', {str(folder)!r}, Path({str(tmp_path / 'cache')!r}))"
    growth, message = peak_growth(setup, call)
    assert growth < 256 * MIB, f"peak memory grew by {growth / MIB:.0f} MiB"
    limit = cifar_sources.SOURCES["cifar10"].member_limit("test_batch")
    assert message.startswith(f"DataError: {folder / 'test_batch'}: ")
    assert f"more than a CIFAR-10 'test_batch' can take ({limit})" in message


def test_cifar_archive_member_over_its_format_limit(tmp_path):
    member = "cifar-10-batches-py/data_batch_2"
    limit = cifar_sources.SOURCES["cifar10"].member_limit("data_batch_2")
    head, tail = _binstring_pickle(limit)
    runs = [
        (name, ZeroRun(obj if isinstance(obj, bytes) else sc.py2_pickle(obj), 0))
        for name, obj in sc.cifar10_contents(sc.cifar10_data(50, 10)).items()
    ]
    runs = [(name, ZeroRun(head, limit, tail) if name == member else run) for name, run in runs]
    path = tar_zero_runs(tmp_path / "big.tar.gz", runs)
    with pytest.raises(DataError) as e:
        cifar.load_cifar("cifar10", path, tmp_path / "cache")
    assert str(e.value).startswith(f"{path}:{member}: {len(head) + limit + len(tail)} bytes")
    assert f"can take ({limit})" in str(e.value)


@pytest.mark.parametrize("pickler", [sc.py2_pickle, lambda obj: pickle.dumps(obj, protocol=2)])
def test_cifar_member_limits_hold_the_published_format(pickler):
    # Per image, the published (Python 2) pickles and a Python 3 protocol-2 re-pack (bytes as
    # UTF-8 text, up to twice as long) both fit the bound the member limits are made of.
    n = 200
    contents = sc.cifar100_contents(sc.cifar100_data(n_train=n, n_test=10))
    size = len(pickler(contents["cifar-100-python/train"]))
    assert size <= n * cifar_sources.MEMBER_BYTES_PER_IMAGE + cifar_sources.MEMBER_ALLOWANCE
    if pickler is not sc.py2_pickle:
        assert size / n > 1.3 * cifar_sources.IMAGE_BYTES  # the growth the bound allows for


# --- HDF5 and .keras ---------------------------------------------------------------------------


def _legacy_h5(path: Path, datasets: dict[str, dict]) -> Path:
    """A Keras 2 save_weights layout: one layer 'conv1_conv' holding `datasets` (h5py kwargs)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"conv1_conv"])
        group = f.create_group("conv1_conv")
        group.attrs["weight_names"] = np.array([n.encode() for n in datasets])
        for name, kwargs in datasets.items():
            group.create_dataset(name, **kwargs)
    return path


@pytest.mark.slow
def test_hdf5_dataset_declaring_gigabytes_is_refused_unread(tmp_path):
    # Chunked and compressed, never written: a few KB that h5py would read as 2 GiB of zeros.
    huge = {
        "shape": (2**14, 2**15),
        "dtype": "float32",
        "chunks": (256, 256),
        "compression": "gzip",
    }
    path = _legacy_h5(tmp_path / "w.h5", {"conv1_conv/kernel:0": huge})
    assert path.stat().st_size < 64 * 1024
    setup = "from cifar100.models.resnet_v2 import load_keras_resnet50v2_h5"
    growth, message = peak_growth(setup, f"load_keras_resnet50v2_h5({str(path)!r})")
    assert growth < 256 * MIB, f"peak memory grew by {growth / MIB:.0f} MiB"
    assert message.startswith(f"ModelError: {path}: '/conv1_conv/conv1_conv/kernel:0' declares")
    assert f"({2 * GIB} bytes)" in message


@pytest.mark.slow
def test_hdf5_weights_over_the_total_bound(tmp_path):
    each = {"shape": (keras_h5.MAX_TENSOR_BYTES // 4,), "dtype": "float32", "chunks": (2**16,)}
    count = keras_h5.MAX_WEIGHT_BYTES // keras_h5.MAX_TENSOR_BYTES + 1
    path = _legacy_h5(tmp_path / "w.h5", {f"conv1_conv/w{i}:0": each for i in range(count)})
    with pytest.raises(ModelError, match=f"more than {keras_h5.MAX_WEIGHT_BYTES} bytes in all"):
        load_keras_resnet50v2_h5(path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"shape": (4,), "dtype": "float32", "external": [("/dev/zero", 0, 16)]},
            "outside the file",
        ),
        ({"data": np.array([b"a", b"b"])}, "not numbers"),
    ],
    ids=["external", "strings"],
)
def test_hdf5_weights_must_be_numbers_inside_the_file(tmp_path, kwargs, message):
    path = _legacy_h5(tmp_path / "w.h5", {"conv1_conv/kernel:0": kwargs})
    with pytest.raises(ModelError, match=message) as e:
        load_keras_resnet50v2_h5(path)
    assert "'/conv1_conv/conv1_conv/kernel:0'" in str(e.value)


@pytest.mark.slow
def test_keras_archive_member_declaring_more_than_a_model_holds(tmp_path):
    path = tmp_path / "m.keras"
    block = 64 * MIB
    size = (keras_h5.MAX_ARCHIVE_WEIGHTS // block + 1) * block
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("config.json", "{}")
        with z.open("model.weights.h5", "w", force_zip64=True) as member:
            for _ in range(size // block):
                member.write(bytes(block))
    assert path.stat().st_size < 16 * MIB
    setup = "from cifar100.models.resnet_v2 import load_keras_resnet50v2_h5"
    growth, message = peak_growth(setup, f"load_keras_resnet50v2_h5({str(path)!r})")
    assert growth < 256 * MIB, f"peak memory grew by {growth / MIB:.0f} MiB"
    assert message.startswith(f"ModelError: {path}: model.weights.h5 in it declares {size} bytes")


# --- damaged EfficientNet-Lite files -----------------------------------------------------------


@pytest.fixture(scope="module")
def lite_state() -> dict[str, torch.Tensor]:
    """A state_dict in the weight packages' layout (file keys), of a fresh backbone."""
    return {file_key(k): v for k, v in EfficientNetLite("efficientnet_lite0").state_dict().items()}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated:UserWarning")
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.to_sparse(), "is a torch.sparse_coo torch.float32 tensor, not a dense real"),
        (lambda t: torch.quantize_per_tensor(t, 0.1, 0, torch.qint8), "not a dense real one"),
        (lambda t: t.to(torch.complex64), "not a dense real one"),
        (lambda t: t.index_fill(0, torch.tensor([0]), float("nan")), "holds NaN or infinite"),
        (lambda t: t.to(torch.int32), "is torch.int32, efficientnet_lite0 expects torch.float32"),
    ],
    ids=["sparse", "quantized", "complex", "nan", "int"],
)
def test_damaged_lite_weights_are_one_clear_error(lite_state, tmp_path, change, message):
    state = dict(lite_state)
    state["_conv_stem.weight"] = change(state["_conv_stem.weight"])
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    with pytest.raises(ModelError) as e:
        load_efficientnet_lite_weights(EfficientNetLite("efficientnet_lite0"), path)
    assert str(e.value).startswith(f"{path}: tensor '_conv_stem.weight' ")
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_lite_weights_zip_declaring_gigabytes_is_refused_unread(tmp_path):
    # torch.save writes a zip; torch.load inflates a deflated member whole, whatever it declares.
    small, path = tmp_path / "small.pth", tmp_path / "lite0.pth"
    torch.save({"_conv_stem.weight": torch.zeros(4)}, small)
    with (
        zipfile.ZipFile(small) as src,
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as out,
    ):
        for info in src.infolist():
            if not info.filename.endswith("/data/0"):
                out.writestr(info, src.read(info))
                continue
            with out.open(info.filename, "w", force_zip64=True) as member:
                for _ in range(8):
                    member.write(bytes(64 * MIB))
    assert path.stat().st_size < 4 * MIB
    with zipfile.ZipFile(path) as z:
        declared = sum(i.file_size for i in z.infolist())
    setup = "from cifar100.weights.efficientnet_lite import read_pth"
    growth, message = peak_growth(setup, f"read_pth({str(path)!r})")
    assert growth < 256 * MIB, f"peak memory grew by {growth / MIB:.0f} MiB"
    assert message.startswith(f"ModelError: {path}: holds {declared} bytes, more than an")


def test_fresh_lite_state_loads(lite_state, tmp_path):
    torch.save(lite_state, tmp_path / "lite0.pth")
    load_efficientnet_lite_weights(EfficientNetLite("efficientnet_lite0"), tmp_path / "lite0.pth")


def test_peak_growth_sees_an_allocation():
    """Guard for peak_growth: 256 MiB allocated and written shows as about that much."""
    growth, message = peak_growth("", "bytearray(b'1') * (256 << 20)")
    assert message == "no error" and 240 * MIB < growth < 300 * MIB
