"""Atomic file writes: a crash never leaves a half file where a good one was."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cifar100.errors import WriteError

MB = 1 << 20


def _read_umask() -> int:
    # Reading the umask means setting it; done once, at import, not while threads write files.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, what: str = "file", needed: int = 0) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only on success.

    A write that fails (no space, no permission) raises one WriteError naming `target` (the
    `what`, e.g. "checkpoint"), and leaves the earlier file there as it was. `needed`, the
    bytes about to be written, is checked against the free space first.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if needed:
            check_free_space(target, needed, what)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as e:
        raise write_failure(target, needed, e, what) from e
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # fsync so that the rename never exposes a file whose bytes are still in flight.
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the mode any new file gets here.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, target)
    except WriteError:
        raise  # already says what and where
    except OSError as e:
        if e.filename not in (None, str(tmp_path), str(target)):
            raise  # another file the caller was reading: not this write's failure
        raise write_failure(target, needed, e, what) from e
    except RuntimeError as e:  # torch.save reports a full disk so ("unexpected pos ...")
        if needed and not _has_room(target, needed):
            raise write_failure(target, needed, e, what) from e
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_writable(target: str | os.PathLike, what: str = "file") -> None:
    """Refuse now, before minutes of work, when `target` could not be written."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise write_failure(target, 0, e, what) from e


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def torch_save_atomic(
    obj: Any, target: str | os.PathLike, what: str = "file", needed: int = 0
) -> None:
    import torch  # on first use: the light commands write files through this module too

    with atomic_path(target, what, needed) as tmp:
        torch.save(obj, tmp)


def mark_used(path: str | os.PathLike) -> None:
    """Set a cache entry's mtime to now, so that clearing by age or size spares it.

    A read-only cache is fine: the entry just keeps its old time.
    """
    with contextlib.suppress(OSError):
        os.utime(path)


def mount_point(path: str | os.PathLike) -> Path:
    """The mount point of the file system that holds (or would hold) `path`."""
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    p = p.resolve()
    while not os.path.ismount(p):
        p = p.parent
    return p


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free on the file system that would hold `path` (None if it cannot be told)."""
    try:
        return shutil.disk_usage(mount_point(path)).free
    except OSError:
        return None


def _no_space(target: Path, needed: int, free: int | None, what: str) -> WriteError:
    sizes = [f"needed about {max(1, round(needed / MB))} MB" if needed else ""]
    sizes.append(f"{free / MB:.0f} MB free" if free is not None else "")
    sizes = ", ".join(x for x in sizes if x)
    return WriteError(
        f"no space left on {mount_point(target)} to write {what} {target}"
        + (f" ({sizes})" if sizes else "")
        + "; free some space there"
    )


def _has_room(target: str | os.PathLike, needed: int) -> bool:
    free = free_bytes(target)
    return free is None or free >= needed


def check_free_space(target: str | os.PathLike, needed: int, what: str = "file") -> None:
    """Refuse before writing when the file system cannot hold `needed` more bytes."""
    if not _has_room(target, needed):
        raise _no_space(Path(target), needed, free_bytes(target), what)


def write_failure(
    target: str | os.PathLike, needed: int, error: BaseException, what: str = "file"
) -> WriteError:
    """The one-line error for a failed write of `target`; the earlier file is untouched."""
    target = Path(target)
    code = getattr(error, "errno", None)
    free = free_bytes(target)
    if code in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < needed):
        return _no_space(target, needed, free, what)
    return WriteError(f"cannot write {what} {target}: {describe_os_error(error)}")


def describe_os_error(error: BaseException) -> str:
    """An OSError (or another write failure) in a few words, with what to do where obvious."""
    code = getattr(error, "errno", None)
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied; choose a location you can write to"
    if code == errno.EROFS:
        return "read-only file system; choose a location you can write to"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device; free some space"
    text = getattr(error, "strerror", None) or str(error).strip().splitlines()[0][:160]
    return text or type(error).__name__


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_problem(path: str | os.PathLike, folder_ok: bool = False) -> str | None:
    """Why a user's `path` cannot be read as a file, in a few words, or None if it can (or if
    it does not exist: the caller's own "not found" says that best).

    Decided from os.stat before anything opens it: opening a FIFO waits for a writer, and a
    device such as /dev/zero never ends. A file of /proc or /sys reports size 0 yet has text,
    so an empty-looking file is read one byte to tell.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:  # a name too long, a symlink loop, a path through a file, EACCES, EIO
        return f"cannot read file ({e.strerror or e})"
    if stat.S_ISDIR(st.st_mode):
        return None if folder_ok else "a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in _KINDS if test(st.st_mode)), "a special file")
        return f"not a regular file ({kind})"
    if st.st_size == 0:
        try:
            with open(path, "rb") as f:
                if f.read(1):
                    return "not a regular file (size 0, yet not empty: a file of /proc or /sys)"
        except OSError as e:
            return f"cannot read file ({e.strerror or e})"
    return None
