"""Downloads that never leave a half file at their destination: stream, verify, rename.

path = fetch_cached(url, cache_dir, "cifar-100-python.tar.gz", md5="eb90...")
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm  # a widget in Jupyter, text on a terminal

from cifar100.errors import ChecksumError, DownloadError
from cifar100.fileio import atomic_path, check_free_space, mark_used, write_json_atomic

CHUNK = 1 << 20
# Sidecar beside a verified cache file: its size, mtime and digests. While size and mtime are
# unchanged the digest is trusted, which saves re-hashing 160 MB (~0.3 s) on every load. A
# rewrite of the file changes its mtime, so truncation or a re-download is still noticed;
# only silent in-place bit rot would slip past, and the archive's own checks catch most of that.
STAMP_SUFFIX = ".verified"
DEFAULT_HINT = "check the URL and the network, or download the file yourself"


def file_digest(path: str | os.PathLike, algo: str = "md5") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algo, usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def size_limit(published_size: int) -> int:
    """A download's max_bytes for a file of known published size.

    Its digest pins the exact bytes, so a larger file would fail that check anyway; the 1% only
    keeps a small slip in a published size here from refusing the real file.
    """
    return published_size + published_size // 100


def download(
    url: str,
    dest: Path,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60,
    *,
    hint: str = DEFAULT_HINT,
    max_bytes: int | None = None,
) -> Path:
    """Download `url` to `dest` via a temporary file; verify length and digests, then rename.

    More than `max_bytes` is refused: at once if the server announces it, else as it arrives.
    `hint` ends every DownloadError message: what the user can do instead.
    """
    dest = Path(dest)
    expected = _expected_digests(md5, sha256)
    hashers = {algo: hashlib.new(algo, usedforsecurity=False) for algo in expected}
    request = urllib.request.Request(url, headers={"User-Agent": "cifar100"})
    # atomic_path removes the temporary file on any exception, so a failure leaves nothing.
    with atomic_path(dest, "download") as tmp:
        response = _open(request, url, timeout, hint)
        total = _content_length(response)
        if max_bytes is not None and total is not None and total > max_bytes:
            response.close()
            raise DownloadError(
                f"download of {url} refused: the server announces {total} bytes, more than "
                f"the {max_bytes} expected for {dest.name}; {hint}"
            )
        received = 0
        bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=dest.name,
            disable=None if progress else True,  # None: shown on a terminal only
        )
        if total is not None:  # no room for it: say so now, not after minutes of downloading
            check_free_space(dest, total, "download")
        with response, open(tmp, "wb") as out, bar:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise DownloadError(
                        f"download of {url} was interrupted after {received} bytes ({e}); {hint}"
                    ) from e
                if not chunk:
                    break
                received += len(chunk)
                if max_bytes is not None and received > max_bytes:
                    raise DownloadError(
                        f"download of {url} stopped: more than the {max_bytes} bytes "
                        f"expected for {dest.name} arrived; {hint}"
                    )
                out.write(chunk)  # a full disk here is atomic_path's to report, naming dest
                for h in hashers.values():
                    h.update(chunk)
                bar.update(len(chunk))
        # http.client reports a connection closed before Content-Length as a plain EOF.
        if total is not None and received != total:
            raise DownloadError(
                f"download of {url} was interrupted: got {received} of {total} bytes; {hint}"
            )
        for algo, want in expected.items():
            got = hashers[algo].hexdigest()
            if got != want:
                raise ChecksumError(
                    f"download of {url} has {algo} {got}, expected {want}: the file is corrupt "
                    "or not the published one"
                )
    return dest


def fetch_cached(
    url: str,
    cache_dir: Path,
    filename: str,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    *,
    hint: str = DEFAULT_HINT,
    max_bytes: int | None = None,
) -> Path:
    """cache_dir/filename if present and intact; otherwise (re-)download it from `url`."""
    path = Path(cache_dir) / filename
    expected = _expected_digests(md5, sha256)
    if path.is_file():
        problem = _verify(path, expected)
        if problem is None:
            mark_used(path)
            return path
        print(
            f"warning: cached {path} is corrupt ({problem}); downloading it again", file=sys.stderr
        )
        # Removed first so that, if the new download fails, no bad file remains at `path`.
        path.unlink()
    _stamp_path(path).unlink(missing_ok=True)
    download(url, path, md5=md5, sha256=sha256, progress=progress, hint=hint, max_bytes=max_bytes)
    _write_stamp(path, expected)
    return path


def _open(request: urllib.request.Request, url: str, timeout: float, hint: str):
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}; {hint}") from e
    except urllib.error.URLError as e:
        raise DownloadError(f"download of {url} failed: {e.reason}; {hint}") from e
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise DownloadError(f"download of {url} failed: {e}; {hint}") from e


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _expected_digests(md5: str | None, sha256: str | None) -> dict[str, str]:
    given = {"md5": md5, "sha256": sha256}
    return {algo: d.lower() for algo, d in given.items() if d}


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + STAMP_SUFFIX)


def _verify(path: Path, expected: dict[str, str]) -> str | None:
    """None when `path` has the expected digests, else what is wrong with it."""
    if not expected:
        return None
    stat = path.stat()
    try:
        stamp = json.loads(_stamp_path(path).read_text())
        if (stamp["size"], stamp["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns) and all(
            stamp["digests"].get(algo) == want for algo, want in expected.items()
        ):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no stamp, or an unreadable one: hash the file
    for algo, want in expected.items():
        got = file_digest(path, algo)
        if got != want:
            return f"{algo} {got}, expected {want}; {stat.st_size} bytes"
    _write_stamp(path, expected)
    return None


def _write_stamp(path: Path, digests: dict[str, str]) -> None:
    if not digests:
        return
    stat = path.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "digests": digests}
    try:
        write_json_atomic(_stamp_path(path), stamp)
    except OSError:
        pass  # a read-only cache still works; it is only hashed on every use
