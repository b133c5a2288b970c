"""What a request may cost the service, checked before the cost is paid.

- bytes: one body at most `max_request_mb` (413), all bodies held at once at most
  `max_inflight_mb` (503 with Retry-After), counted as they arrive;
- images: at most `max_images` in one request (413);
- pixels: each image at most `max_pixels` and a request's images together at most
  `max_request_pixels`, as their headers declare them, before any is decoded (413).

Every refusal is a RequestError: an HTTP status, one line for the client, a kind for the metrics.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import logging
import threading

from PIL import Image
from starlette.requests import ClientDisconnect, Request

from cifar100.serve.protocol import TIMED_OUT

log = logging.getLogger("cifar100.serve")
HELD = "cifar100.held_bytes"  # in a request's scope: what it holds of the byte budget


class RequestError(Exception):
    """A request the service refuses: its HTTP status, one line, and a kind for the metrics."""

    def __init__(self, status: int, message: str, kind: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, headers or {}


class InflightBytes:
    """The request bodies held at once, across requests, against one budget. Once a burst is
    over, the memory it took is handed back to the operating system."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held, self._peak = limit, 0, 0
        self._lock = threading.Lock()  # released from the event loop, trimmed from a thread

    def take(self, scope: dict, n: int) -> None:
        """Count `n` more bytes for this request, or refuse it (503) if the budget is spent."""
        if n <= 0:
            return
        if self.held + n > self.limit:
            raise RequestError(
                503,
                f"busy: request bodies of {self.held} bytes are being read or processed, and "
                f"{n} more would pass this server's limit of {self.limit} (--max-inflight-mb); "
                "retry in 1 s",
                "inflight_full",
                {"Retry-After": "1"},
            )
        self.held += n
        self._peak = max(self._peak, self.held)
        scope[HELD] = scope.get(HELD, 0) + n

    def release(self, scope: dict) -> bool:
        """Give back what the request held; True when a burst has just ended (nothing held
        now, after more than TRIM_AFTER_BYTES at once), when memory is worth trimming."""
        self.held -= scope.pop(HELD, 0)
        if self.held == 0 and self._peak > TRIM_AFTER_BYTES:
            self._peak = 0
            return True
        return False

    def trim(self) -> None:
        """glibc keeps freed memory in its heaps for reuse: hand it back (a few ms)."""
        with self._lock:
            _malloc_trim()


TRIM_AFTER_BYTES = 32 << 20


def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()


def _malloc_trim() -> None:
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


async def read_body(request: Request, max_bytes: int, inflight: InflightBytes) -> bytes:
    """The request body, refused with 413 as soon as it passes `max_bytes` (or declares more),
    and with 503 once the bodies held across requests would pass their budget. Bytes count as
    they arrive, not as declared, so that slow clients cannot hold the budget with promises."""
    declared = request.headers.get("content-length", "")
    length = int(declared) if declared.isascii() and declared.isdigit() else None
    if length is not None and length > max_bytes:
        raise RequestError(413, _too_large(length, max_bytes), "too_large")
    chunks, received = [], 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise RequestError(413, _too_large(received, max_bytes, True), "too_large")
            inflight.take(request.scope, len(chunk))
            chunks.append(chunk)
    except ClientDisconnect:
        if request.scope.get(TIMED_OUT):  # protocol.py has answered 408 already
            raise RequestError(408, "request body timed out", "body_timeout") from None
        # nginx's "client closed request": nobody reads it, the log and metrics do
        raise RequestError(499, "client closed the connection mid-body", "disconnected") from None
    return b"".join(chunks)


def _too_large(size: int, limit: int, at_least: bool = False) -> str:
    more = "more than " if at_least else ""
    return (
        f"request body of {more}{size} bytes is over this server's limit of {limit} "
        f"({limit / (1 << 20):g} MB, --max-request-mb); send fewer or smaller images per request"
    )


def check_count(n: int, max_images: int) -> None:
    if n == 0:
        raise RequestError(400, "no image in the request", "bad_request")
    if n > max_images:
        raise RequestError(
            413,
            f"{n} images in one request, over this server's limit of {max_images} "
            "(--max-images); split them",
            "too_many",
        )


def decode_cost(data: bytes, size: int) -> int:
    """The pixels decoding `data` at `size` will produce, from its header alone: width x height,
    less what JPEG's reduced-size decoding saves (data/images.py decodes a large JPEG at the
    smallest of 1/2, 1/4, 1/8 that keeps 2x `size`). 0 for what is not an image: decoding then
    refuses it as cheaply as this could."""
    size_and_kind = _png_or_jpeg_size(data)
    if size_and_kind is None:
        try:
            with Image.open(io.BytesIO(data)) as im:
                size_and_kind = im.size, im.format == "JPEG"
        except Exception:  # any plugin's error, a decompression bomb: decode_image says which
            return 0
    (width, height), jpeg = size_and_kind
    if jpeg and min(width, height) >= 4 * size:
        scale = min(width, height) // (2 * size)
        shrink = next(s for s in (8, 4, 2, 1) if scale >= s)
        width, height = -(-width // shrink), -(-height // shrink)
    return width * height


def _png_or_jpeg_size(data: bytes) -> tuple[tuple[int, int], bool] | None:
    """((width, height), is JPEG) read straight from a PNG's or a baseline or progressive
    JPEG's header, a tenth of what opening it with Pillow costs (most requests are these);
    None for anything else, or anything unexpected."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")), False
    if data[:2] != b"\xff\xd8":
        return None
    at, size = 2, None
    while at + 9 <= len(data) and data[at] == 0xFF and data[at + 1] != 0xDA:  # SOS: data
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in SOF_MARKERS:  # length (2), precision (1), height (2), width (2)
            height = int.from_bytes(data[at + 5 : at + 7], "big")
            width = int.from_bytes(data[at + 7 : at + 9], "big")
            # Pillow takes the last frame header before the scan: the largest is the safe guess
            if size is None or width * height > size[0] * size[1]:
                size = width, height
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return (size, True) if size and size[0] and size[1] else None


SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                         0xCF})  # fmt: skip


def check_pixels(costs: list[int], limit: int) -> None:
    total = sum(costs)
    if total > limit:
        raise RequestError(
            413,
            f"{len(costs)} images of {total} pixels to decode in all (as their headers "
            f"declare them), over this server's limit of {limit} per request "
            "(--max-request-pixels); send fewer or smaller images per request",
            "too_large",
        )
