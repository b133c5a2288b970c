"""Test helpers: image files that are small where they are kept and large once read (headers
that declare gigabytes, sparse files, flat images of many pixels), and the peak memory a call
takes in a fresh interpreter."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_head(width: int, height: int, chunk: bytes = b"IDAT", length: int = 0) -> bytes:
    """A PNG signature and IHDR for width x height RGB, then the header of a `length` byte
    `chunk`: IDAT ends the header (Pillow opens it); an unknown one Pillow reads to skip it."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    ihdr = struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    return b"\x89PNG\r\n\x1a\n" + ihdr + struct.pack(">I", length) + chunk


def flat_png(width: int, height: int, colour: int = 2, depth: int = 8, end: bool = True) -> bytes:
    """A real PNG of zeros (colour type 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA), written row by
    row: a few hundred KB for 9000 x 9000. Without `end`, no IEND: a chunk may follow."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row = bytes(1 + width * channels * depth // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
    return png + (png_chunk(b"IEND", b"") if end else b"")


def webp_head(width: int, height: int) -> bytes:
    """A WebP's RIFF header and VP8X chunk declaring width x height (Pillow reads it whole)."""
    size = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + bytes(4) + b"WEBPVP8X" + struct.pack("<I", 10) + bytes(4) + size


def sparse_file(path: Path, head: bytes, size: int, tail: bytes = b"") -> Path:
    """`head`, a hole of zeros, `tail`: `size` bytes long, taking no disk space."""
    with open(path, "wb") as f:
        f.write(head)
        f.seek(size - len(tail))
        f.write(tail)
        f.truncate(size)
    return path


def peak_run(setup: str, call: str) -> tuple[int, str, str]:
    """Run `setup` then `call` in a fresh interpreter: (growth of its peak resident memory over
    `setup`, in bytes; the error `call` raised, as 'Type: message', or 'no error'; its stderr)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("measures VmHWM in /proc/self/status (Linux)")
    # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's peak (kept across exec).
    script = "\n".join(
        [
            "import sys",
            "def peak():",
            "    return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])",
            f"sys.path.insert(0, {str(TESTS)!r})",
            textwrap.dedent(setup),
            "before = peak()",
            "try:",
            f"    {call}",
            "    message = 'no error'",
            "except Exception as e:",
            "    message = f'{type(e).__name__}: {e}'",
            "print(1024 * (peak() - before))",
            "print(message)",
        ]
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    growth, message = done.stdout.strip().split("\n", 1)
    return int(growth), message, done.stderr


def peak_growth(setup: str, call: str) -> tuple[int, str]:
    """peak_run without the stderr."""
    growth, message, _ = peak_run(setup, call)
    return growth, message
