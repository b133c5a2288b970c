"""One trainer per run directory: an advisory lock that the operating system releases when the
process ends, however it ends (SIGKILL and a lost machine's reboot included).

    with RunLock(run_dir):      # a second `train --resume run_dir` is refused, naming the holder
        ...
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from cifar100.errors import CheckpointError
from cifar100.runtime.run_dir import LOCK_NAME

try:
    import fcntl
except ImportError:  # Windows: no advisory locks through fcntl; runs are not guarded there
    fcntl = None


_held: set[int] = set()  # descriptors of the locks this process holds


def _close_in_child() -> None:
    # A forked child (the image decoders) would otherwise keep the lock alive after its
    # parent died. flock belongs to the open file, so the parent's descriptor still holds it.
    for fd in list(_held):
        os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class RunLock:
    """An exclusive lock on `run_dir/.lock`, holding who took it (process, host, command)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None
        self.made_dir = False  # this lock created the run directory

    def acquire(self) -> RunLock:
        if fcntl is None:
            return self
        self.made_dir = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _describe(os.pread(fd, 4096, 0))
            os.close(fd)
            run = self.path.parent
            raise CheckpointError(
                f"{run} is in use: {holder} is training it; wait for that process to end "
                f"(or stop it: Ctrl-C there saves its position), then `cifar100 train "
                f"--resume {run}`"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self.fd = fd
        _held.add(fd)
        return self

    def release(self) -> None:
        """Let another process train the run. The file stays (removing it would race), unless
        the run failed before writing anything into a directory this lock created."""
        if self.fd is None:
            return
        run = self.path.parent
        if self.made_dir and [p.name for p in run.iterdir()] == [LOCK_NAME]:
            self.path.unlink()
            run.rmdir()
        _held.discard(self.fd)
        os.close(self.fd)  # closing releases the lock
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(raw: bytes) -> str:
    try:
        info = json.loads(raw.decode())
        return f"process {info['pid']} on {info['host']} (since {info['since']}: {info['command']})"
    except (ValueError, KeyError, TypeError):
        return "another process"
