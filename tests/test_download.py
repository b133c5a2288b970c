"""download / fetch_cached against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import socket

import pytest

from cifar100.data import download as dl
from cifar100.errors import ChecksumError, DataError, DownloadError
from http_server import serve_directory

NAME = "payload.bin"
PAYLOAD = os.urandom(300_000)  # several 64 KiB reads, and >1 chunk of the progress bar
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / NAME).write_bytes(PAYLOAD)
    with serve_directory(root) as srv:
        yield srv


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_file_digest(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD)
    assert dl.file_digest(path) == MD5
    assert dl.file_digest(path, "sha256") == SHA256


@pytest.mark.parametrize("digests", [{}, {"md5": MD5}, {"sha256": SHA256.upper()}])
def test_download_writes_verified_file(server, tmp_path, digests):
    dest = tmp_path / "out" / NAME
    assert dl.download(server.url(NAME), dest, progress=False, **digests) == dest
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(dest.parent) == [NAME]


def test_fetch_cached_second_call_makes_no_request_and_no_rehash(server, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    path = dl.fetch_cached(server.url(NAME), cache, NAME, md5=MD5, progress=False)
    assert path == cache / NAME and path.read_bytes() == PAYLOAD
    assert server.requests[f"/{NAME}"] == 1

    # The stamp written beside the file lets the next call skip hashing it.
    def no_hashing(*args, **kwargs):
        raise AssertionError("re-hashed a stamped file")

    monkeypatch.setattr(dl, "file_digest", no_hashing)
    assert dl.fetch_cached(server.url(NAME), cache, NAME, md5=MD5, progress=False) == path
    assert server.total_requests == 1


@pytest.mark.parametrize("algo", ["md5", "sha256"])
def test_digest_mismatch_raises_and_leaves_nothing(server, tmp_path, algo):
    dest = tmp_path / "out" / NAME
    wrong = "0" * len(MD5 if algo == "md5" else SHA256)
    with pytest.raises(ChecksumError) as e:
        dl.download(server.url(NAME), dest, progress=False, **{algo: wrong})
    msg = str(e.value)
    actual = MD5 if algo == "md5" else SHA256
    assert server.url(NAME) in msg and wrong in msg and actual in msg
    assert leftovers(dest.parent) == []


def test_http_error_raises_and_leaves_nothing(server, tmp_path):
    server.fail[f"/{NAME}"] = 500
    dest = tmp_path / "out" / NAME
    with pytest.raises(DownloadError) as e:
        dl.download(server.url(NAME), dest, md5=MD5, progress=False, hint="pass --data PATH")
    msg = str(e.value)
    assert f"download of {server.url(NAME)} failed: HTTP 500 Internal Server Error" in msg
    assert msg.endswith("pass --data PATH")
    assert leftovers(dest.parent) == []


def test_missing_file_is_a_download_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        dl.download(server.url("nope.bin"), tmp_path / "nope.bin", progress=False)
    assert not (tmp_path / "nope.bin").exists()


def test_interrupted_download_raises_and_leaves_nothing(server, tmp_path):
    server.truncate[f"/{NAME}"] = 100_000
    dest = tmp_path / "out" / NAME
    # Without a digest the length check alone must catch the short body.
    with pytest.raises(DownloadError, match="interrupted: got 100000 of 300000 bytes"):
        dl.download(server.url(NAME), dest, progress=False)
    assert leftovers(dest.parent) == []


def test_network_error_names_the_url(tmp_path):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{NAME}"
    with pytest.raises(DownloadError, match=f"download of {url} failed"):
        dl.download(url, tmp_path / NAME, progress=False, timeout=5)
    assert leftovers(tmp_path) == []


def test_errors_are_data_errors():
    # The CLI reports every DataError as one line; downloads must be among them.
    assert issubclass(DownloadError, DataError) and issubclass(ChecksumError, DataError)


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "stale_stamp"])
def test_corrupt_cache_is_detected_and_rebuilt(server, tmp_path, capsys, damage):
    cache = tmp_path / "cache"
    path = dl.fetch_cached(server.url(NAME), cache, NAME, md5=MD5, progress=False)
    stamp = path.with_name(NAME + dl.STAMP_SUFFIX)
    if damage == "truncate":
        path.write_bytes(PAYLOAD[:1000])
    elif damage == "flip_byte":  # same size; the rewrite changes the mtime, voiding the stamp
        path.write_bytes(bytes([PAYLOAD[0] ^ 1]) + PAYLOAD[1:])
    else:  # size and mtime kept, but the stamp vouches for another digest: not trusted
        st = path.stat()
        path.write_bytes(PAYLOAD[:-1] + b"\0")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        stamp.write_text(
            json.dumps(
                {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digests": {"md5": "0" * 32}}
            )
        )
    capsys.readouterr()
    assert dl.fetch_cached(server.url(NAME), cache, NAME, md5=MD5, progress=False) == path
    assert path.read_bytes() == PAYLOAD
    assert server.requests[f"/{NAME}"] == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: cached {path} is corrupt")


def test_corrupt_cache_with_failing_redownload_leaves_no_file(server, tmp_path, capsys):
    cache = tmp_path / "cache"
    path = dl.fetch_cached(server.url(NAME), cache, NAME, md5=MD5, progress=False)
    path.write_bytes(b"junk")
    server.fail[f"/{NAME}"] = 500
    with pytest.raises(DownloadError):
        dl.fetch_cached(server.url(NAME), cache, NAME, md5=MD5, progress=False)
    assert leftovers(cache) == []


def test_fetch_cached_without_digest_trusts_an_existing_file(server, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / NAME).write_bytes(b"mine")
    assert dl.fetch_cached(server.url(NAME), cache, NAME, progress=False).read_bytes() == b"mine"
    assert server.total_requests == 0


def test_announced_size_over_max_bytes_is_refused_before_reading(server, tmp_path):
    server.announce[f"/{NAME}"] = 10**12  # a terabyte promised; nothing of it is read
    dest = tmp_path / "out" / NAME
    with pytest.raises(DownloadError) as e:
        dl.download(server.url(NAME), dest, progress=False, max_bytes=len(PAYLOAD), hint="h")
    msg = str(e.value)
    assert msg == (
        f"download of {server.url(NAME)} refused: the server announces {10**12} bytes, more "
        f"than the {len(PAYLOAD)} expected for {NAME}; h"
    )
    assert leftovers(dest.parent) == []


def test_download_stops_once_more_than_max_bytes_arrive(server, tmp_path):
    server.announce[f"/{NAME}"] = None  # no Content-Length: the body ends when the server closes
    dest = tmp_path / "out" / NAME
    with pytest.raises(DownloadError, match="stopped: more than the 100000 bytes expected"):
        dl.fetch_cached(server.url(NAME), dest.parent, NAME, progress=False, max_bytes=100_000)
    assert leftovers(dest.parent) == []
    # At the bound, or without a length but within it, it downloads as usual.
    dl.download(server.url(NAME), dest, md5=MD5, progress=False, max_bytes=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD


def test_size_limit_leaves_a_small_margin():
    assert dl.size_limit(169_001_437) == 169_001_437 + 1_690_014
