"""Image folders: a directory or tarball of class subfolders, decoded once and cached.

    load_image_folder("~/pets", image_size=32, cache_dir=cache)     # pets/<class>/*.jpg

Layouts: ROOT/<class>/... (a seeded, stratified test split is made), or ROOT/train/<class>/...
beside ROOT/test/<class>/... (val/, valid/ or validation/ stand in for a missing test/).
A single wrapping folder (cifar10-jpeg/ in cifar10-jpeg.tar.gz) is descended into.
Files in class folders that are not readable images are skipped with one warning, or refused
with one error where `strict` (folder_layout.report_skipped), from the cache as on a first load.
Junk (.DS_Store, __MACOSX, .git...) is left out silently; any other name starting with '.' is
left out as hidden, with one warning where it holds images (hidden_names.py).
"""

from __future__ import annotations

import io
import os
import re
import stat
import tarfile
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm.auto import tqdm  # a widget in Jupyter, text on a terminal

from cifar100.data.decode_pool import DecodePool
from cifar100.data.download import file_digest
from cifar100.data.folder_cache import cache_key, read_cache, write_cache
from cifar100.data.folder_layout import (
    Fetch,
    Listing,
    build_splits,
    is_image,
    report_skipped,
    warn_case_twins,
)
from cifar100.data.hidden_names import holds_images, is_junk, warn_hidden
from cifar100.data.images import HEADER_BYTES, check_expansion, check_file_size
from cifar100.data.tensors import DataSplits
from cifar100.errors import ConfigError, DataError
from cifar100.fileio import file_problem

__all__ = ["load_image_folder"]

CHUNK = 256  # images per worker task: amortises the hand-over, still fine-grained for the bar
# A task is also cut at this many encoded bytes: with 2 tasks per worker in flight, that bounds
# what a tarball of large (or zero-filled) members holds in memory at once.
CHUNK_BYTES = 32 << 20
READ_BLOCK = 1 << 20  # a large member is read, and its expansion checked, this much at a time
REASON_CHARS = 160  # a skipped file's reason is cut to this in the warning and the error


def load_image_folder(
    path: str | Path,
    image_size: int,
    cache_dir: Path,
    test_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
    strict: bool = False,
) -> DataSplits:
    """Decode an image folder or tarball into uint8 splits of image_size^2, cached on disk.

    Files in class folders that are not readable images are skipped with one warning, listed
    in `info["skipped_files"]`; `strict` refuses them instead (one DataError naming them).
    """
    if not path:
        raise DataError("no image folder given: set data.path to a folder or a .tar/.tar.gz")
    if image_size < 1:
        raise ConfigError(f"data.image_size must be a positive number, got {image_size}")
    src, listing, material, name = _identify(path)

    start = time.perf_counter()
    key = cache_key(material, image_size, test_fraction, seed)
    cache_path = Path(cache_dir) / "folders" / f"{key}.npz"
    cached = read_cache(cache_path) if cache_path.exists() else None
    if cached is None:
        bar = tqdm(desc=f"decoding {name}", unit="img", disable=not progress)
        with bar, DecodePool(image_size, bar) as decoder:
            if listing is None:
                listing, fetch = _stream_tarball(src, decoder)
            else:
                fetch = _directory_fetch(src, decoder)
            train, test, meta = build_splits(src, listing, fetch, test_fraction, seed)
        meta["origin"] = str(src.resolve())  # what `cifar100 cache` names the entry by
        write_cache(cache_path, train, test, meta)
    else:
        train, test, meta = cached
    # After the cache, so that a hit warns or refuses as the miss did; the key leaves `strict`
    # out, so a strict refusal still leaves the cache for a run that skips. A cache from before
    # skipping existed was only ever written with nothing to skip.
    skipped = meta.setdefault("skipped_files", [])
    report_skipped(src, skipped, strict)
    warn_hidden(src, meta.setdefault("hidden", []))  # a cache from before: none was recorded
    warn_case_twins(src, train.classes)  # after the cache too: a hit says it again
    info = {
        "cache": "miss" if cached is None else "hit",
        "cache_path": str(cache_path),
        "image_size": image_size,
        "seconds": round(time.perf_counter() - start, 3),
        "skipped": len(skipped),
        **meta,
    }
    return DataSplits(name=name, train=train, test=test, source=str(path), info=info)


def _identify(path: str | Path) -> tuple[Path, Any, dict, str]:
    """The folder or tarball at `path`: its path, its listing (None for a tarball, listed as
    it streams), what its cache key is made of, and its name; one DataError where it is not
    one."""
    src = Path(path).expanduser()
    problem = file_problem(src, folder_ok=True)  # before anything opens it: a FIFO would block
    if problem:
        raise DataError(
            f"{src}: {problem}; give an image folder (one subfolder per class) or a "
            ".tar/.tar.gz of one"
        )
    try:
        is_tar = src.is_file() and tarfile.is_tarfile(src)
        digest = file_digest(src, "sha256") if is_tar else None
    except OSError as e:
        raise DataError(f"{src}: cannot read ({e.strerror or e})") from e
    if src.is_dir():
        listing = _scan_directory(src)
        material = {"kind": "dir", "files": sorted([k, *v] for k, v in listing.files.items())}
        if listing.hidden:  # only then: the keys of folders cached before stay as they were
            material["hidden"] = sorted(listing.hidden)
        name = src.resolve().name
    elif is_tar:
        listing, material = None, {"kind": "tar", "sha256": digest}
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

    return src, listing, material, name


# --- listing ----------------------------------------------------------------------------------


def _scan_directory(root: Path) -> Listing:
    listing, seen = Listing(), set()

    def walk(d: Path, rel: str) -> None:
        try:
            st = d.stat()
            if (st.st_dev, st.st_ino) in seen:  # a symlink loop, or a folder linked twice
                return
            seen.add((st.st_dev, st.st_ino))
            listing.add_dir(rel)
            with os.scandir(d) as entries:
                for e in entries:
                    if is_junk(e.name):
                        continue
                    r = f"{rel}/{e.name}" if rel else e.name
                    s = _follow(e)
                    if e.name.startswith("."):
                        if stat.S_ISDIR(s.st_mode) and holds_images(e.path):
                            listing.hidden.add(f"{r}/")
                        elif is_image(e.name):
                            listing.hidden.add(r)
                    elif stat.S_ISDIR(s.st_mode):  # followed: a linked class folder is read
                        walk(Path(e.path), r)
                    else:
                        listing.add_file(r, s.st_size, s.st_mtime_ns)
        except OSError as err:
            raise DataError(f"{err.filename or d}: cannot read ({err.strerror})") from err

    walk(root, "")
    return listing


def _follow(entry: os.DirEntry) -> os.stat_result:
    """The entry's stat, following a link; the link's own where it cannot be followed (a loop,
    a missing target): decoding then skips that one file, saying why."""
    try:
        return entry.stat()
    except OSError:
        return entry.stat(follow_symlinks=False)


def _member_path(src: Path, m: tarfile.TarInfo, listing: Listing) -> str | None:
    """The member's normalised relative path; None if left out (junk, or hidden: an image
    there goes into `listing.hidden`); DataError if unsafe."""
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
    if not parts or any(is_junk(p) for p in parts):
        return None
    hidden = next((i for i, p in enumerate(parts) if p.startswith(".")), None)
    if hidden is not None:
        if m.isfile() and is_image(parts[-1]):
            top = "/".join(parts[: hidden + 1])
            listing.hidden.add(top if hidden == len(parts) - 1 else f"{top}/")
        return None
    return "/".join(parts)


def _stream_tarball(src: Path, decoder: DecodePool) -> tuple[Listing, Fetch]:
    """List the members and decode every image among them in one pass; nothing touches disk."""
    # One pass: a compressed tarball only reads forwards cheaply, and decoding overlaps the
    # (single-threaded) decompression. Images outside the final layout are decoded in vain,
    # which is cheaper than decompressing twice.
    listing = Listing()
    refused: dict[str, str] = {}  # like decode errors: reported only for images in the layout
    for chunk in _image_chunks(src, listing, refused):
        decoder.add(chunk)

    def fetch(paths: list[str]) -> tuple[np.ndarray, dict[str, str]]:
        images, failed = decoder.gather([p for p in paths if p not in refused])
        failed.update((p, refused[p]) for p in paths if p in refused)
        return images, {p: _reason(msg, f"{p} in {src}") for p, msg in failed.items()}

    return listing, fetch


def _image_chunks(
    src: Path, listing: Listing, refused: dict[str, str]
) -> Iterator[list[tuple[str, bytes, str]]]:
    """Read the tarball into `listing`, yielding its images in chunks to decode.

    An image whose header is not one, or whose declared size is more than that image can take
    (images.check_file_size), goes unread into `refused`; one that expands more than image data
    from what it took in the tarball (images.check_expansion) goes there as soon as it has,
    read no further: a member is never held beyond that. Errors reading the tarball itself
    (tarfile, gzip, zlib, bz2, lzma, OSError) become one DataError.
    """
    chunk, chunk_bytes, m = [], 0, None
    try:
        # Opened here, not by tarfile: its position is what a member took, compressed.
        with open(src, "rb") as packed, tarfile.open(fileobj=packed, tarinfo=_CheckedInfo) as tar:
            for m in tar:
                rel = _member_path(src, m, listing)
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
                if not is_image(rel):
                    continue
                name, start = f"{rel} in {src}", packed.tell()
                f = tar.extractfile(m)
                data = f.read(min(m.size, HEADER_BYTES))
                try:
                    check_file_size(data, m.size, name)
                    if m.size > len(data):
                        data = _read_rest(f, data, m.size, name, packed, start)
                except DataError as e:
                    refused[rel] = str(e)
                    continue
                chunk.append((rel, data, name))
                chunk_bytes += len(data)
                if len(chunk) == CHUNK or chunk_bytes >= CHUNK_BYTES:
                    yield chunk  # decoded by the caller, outside this try: not tar errors
                    chunk, chunk_bytes = [], 0
    except DataError:
        raise
    except Exception as e:
        at = f" at or after member '{m.name}'" if m is not None else ""
        raise DataError(
            f"{src}: truncated or corrupt tarball{at} ({type(e).__name__}: {e}); "
            "download or pack it again"
        ) from e
    if chunk:
        yield chunk


def _read_rest(
    f: IO[bytes], head: bytes, size: int, name: str, packed: IO[bytes], start: int
) -> bytes:
    """A member of `size` bytes whose `head` is read, in one buffer (no copy that doubles it),
    refused as soon as it holds more than image data can expand from the bytes of the tarball
    file `packed` it took so far, from `start` (images.check_expansion)."""
    buf = io.BytesIO()
    buf.write(head)
    while (left := size - buf.tell()) > 0:
        block = f.read(min(left, READ_BLOCK))
        if not block:
            break  # cut short: tarfile has said so already, or will at the next member
        buf.write(block)
        check_expansion(buf.tell(), packed.tell() - start, name, "of the compressed tarball")
    return buf.getvalue()


class _CheckedInfo(tarfile.TarInfo):
    """Member headers read as usual, except that tarfile's quiet stop at a damaged header or at
    a file cut short is an error: only the end-of-archive block (zeros) may end the tarball."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError) as e:
            raise tarfile.ReadError(
                f"it ends at byte {tarfile_.offset} without the end marker"
            ) from e
        except tarfile.InvalidHeaderError as e:
            raise tarfile.ReadError(f"a damaged member header at byte {tarfile_.offset}") from e


def _directory_fetch(src: Path, decoder: DecodePool) -> Fetch:
    def fetch(paths: list[str]) -> tuple[np.ndarray, dict[str, str]]:
        decoder.bar.reset(total=len(paths))
        jobs = ((p, str(src / p), str(src / p)) for p in paths)
        for chunk in iter(lambda: list(islice(jobs, CHUNK)), []):
            decoder.add(chunk)
        images, failed = decoder.gather(paths)
        return images, {p: _reason(msg, str(src / p)) for p, msg in failed.items()}

    return fetch


def _reason(message: str, name: str) -> str:
    """A decoding error as a short reason: without the file's name (the summary names the
    file), the "not a readable image (...)" around it, or the advice after a ';'."""
    reason = message.removeprefix(f"{name}: ").split("; ")[0]
    if reason.startswith("not a readable image (") and reason.endswith(")"):
        reason = reason[len("not a readable image (") : -1]
    return reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 3] + "..."
