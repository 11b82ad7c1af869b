"""Reading an uploaded image safely: size bounded while it arrives, kept in memory, judged by its content.

The multipart body is parsed here (with python-multipart, the parser Starlette uses) instead of by the
framework, for two reasons: the size limit stops the transfer as soon as it is exceeded (a declared
``Content-Length`` over the limit is refused before anything is read), and the file never leaves memory.
Whether it is an image is decided by decoding it, never by its name or declared type; only common raster
formats are opened (no EPS/PDF, whose Pillow plugins call external programs), and the pixel count is checked
from the header before the pixels are decoded (a small file can expand to gigabytes: a decompression bomb).
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from PIL import Image, UnidentifiedImageError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from ctran.serving.errors import ApiError

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 50_000_000  # a 50-megapixel photo; below Pillow's own bomb limit (about 89 M)
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
FORM_OVERHEAD = 64 * 1024  # room for the multipart boundaries, part headers and small fields around the file
FILE_FIELD = "file"


@dataclass
class Upload:
    """The uploaded file: its name (for display only, never a path) and its bytes."""

    filename: str
    data: bytes


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"the upload is larger than the limit of {limit / 2**20:g} MB")


async def read_upload(
    headers: Mapping[str, str], stream: AsyncIterator[bytes], limit: int = MAX_UPLOAD_BYTES
) -> Upload:
    """The multipart field ``file`` of a request body, read chunk by chunk and refused once over ``limit``."""
    kind, options = parse_options_header(headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise ApiError(415, f"send the image as multipart/form-data with a field named {FILE_FIELD!r}")
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise too_large(limit)
    form = _FileField(limit)
    parser = MultipartParser(options[b"boundary"], form.callbacks())
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > limit + FORM_OVERHEAD:
                raise too_large(limit)
            parser.write(chunk)
        parser.finalize()
    except FormParserError as err:
        raise ApiError(400, f"malformed multipart body: {err}") from err
    return form.result()


@dataclass
class _FileField:
    """python-multipart callbacks that keep the bytes of the one ``file`` part and drop every other part."""

    limit: int
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)
    complete: bool = False
    _header: bytearray = field(default_factory=bytearray)
    _value: bytearray = field(default_factory=bytearray)
    _disposition: bytes = b""
    _collecting: bool = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._disposition, self._collecting = b"", False

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = bytes(self._value)
        self._header.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name", b"").decode("latin-1") != FILE_FIELD:
            return
        if self.filename is not None:
            raise ApiError(400, f"send one image per request (the form has several {FILE_FIELD!r} fields)")
        self.filename = display_name(options.get(b"filename", b"").decode("utf-8", "replace"))
        self._collecting = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._collecting:
            self.data.extend(data[start:end])
            if len(self.data) > self.limit:
                raise too_large(self.limit)

    def _end(self) -> None:
        self.complete = True

    def result(self) -> Upload:
        if not self.complete:
            raise ApiError(400, "malformed multipart body: it ends before its closing boundary")
        if self.filename is None:
            raise ApiError(400, f"the form has no {FILE_FIELD!r} field; send the image as that field")
        if not self.data:
            raise ApiError(400, "the uploaded file is empty")
        return Upload(self.filename, bytes(self.data))


def display_name(filename: str) -> str:
    """The last component of a client-given file name, printable and short: a label, never a path."""
    name = PurePosixPath(filename.replace("\\", "/")).name
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()
    return name[:120] or "upload"


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode in memory; 415 when it is no image of an accepted format, 413 when it has too many pixels."""
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError as err:
        raise ApiError(415, f"not an image in an accepted format ({', '.join(FORMATS)})") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ApiError(413, f"the image has too many pixels to decode safely ({err})") from err
    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(
            413,
            f"the image is {width} x {height} = {width * height / 1e6:.1f} megapixels; "
            f"the limit is {max_pixels / 1e6:g}",
        )
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ApiError(413, f"the image has too many pixels to decode safely ({err})") from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ApiError(400, f"cannot decode the {image.format} image: {err}") from err
    return image
