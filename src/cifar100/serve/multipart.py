"""The files of a multipart/form-data body already in memory, with python-multipart's parser.

    files = read_files(body, request.headers["content-type"])   # [(file name, bytes), ...]

Every file part is counted (a request of 1,000 images is refused as 1,000, not as the first
over the limit), a part's header may be as long as the request head may be (a long file name is
a file name), and a body cut off before its closing boundary is refused as cut off. Starlette's
own form parser spools each file to a temporary file through a thread pool; the body is here
whole already (it is read under the service's byte limits first).
"""

from __future__ import annotations

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

__all__ = ["MalformedMultipart", "read_files"]

MAX_PART_HEADER_BYTES = 64 << 10  # one header line of a part (python-multipart's default: 4 KB)


class MalformedMultipart(ValueError):
    """A body that is not the multipart form its content type says it is; one line."""


def read_files(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """(file name, else field name; bytes) of each file part, in order. Parts without a file
    name (plain form fields) are left out."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise MalformedMultipart("no boundary in its Content-Type")
    reader = _Reader()
    try:
        parser = MultipartParser(
            boundary, reader.callbacks(), max_header_size=MAX_PART_HEADER_BYTES
        )
        parser.write(body)
        parser.finalize()
    except FormParserError as e:  # MultipartParseError and the boundary's own checks
        raise MalformedMultipart(str(e).rstrip(".")) from None
    if not reader.ended:
        what = "cut off before its closing boundary" if reader.parts else "no part in it"
        raise MalformedMultipart(f"{what} (--{boundary.decode('latin-1')}--)")
    return reader.files


class _Reader:
    """The parser's callbacks: each part's headers, and where its data lies in the body."""

    def __init__(self) -> None:
        self.files: list[tuple[str, bytes]] = []
        self.ended, self.parts = False, 0
        self._field, self._value, self._headers = b"", b"", {}
        self._data: list[bytes] = []

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _begin(self) -> None:
        self.parts += 1
        self._headers, self._data = {}, []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data.append(data[start:end])

    def _part_end(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"filename" in options:
            name = options[b"filename"] or options.get(b"name", b"")
            self.files.append((_text(name), b"".join(self._data)))

    def _end(self) -> None:
        self.ended = True


def _text(name: bytes) -> str:
    # Browsers send UTF-8 file names; anything else is shown as Latin-1 rather than refused.
    try:
        return name.decode()
    except UnicodeDecodeError:
        return name.decode("latin-1")
