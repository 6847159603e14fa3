"""Read what we need from a JPEG's headers without decoding it.

Size (to pick a DCT-domain reduction), component count (1 gray, 3 YCbCr,
4 CMYK/YCCK), baseline or progressive, EXIF orientation, and whether the
end-of-image marker is present.  Pure bytes in, facts out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_BASELINE = {0xC0, 0xC1}


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int
    components: int
    sof: int
    orientation: int
    has_eoi: bool

    @property
    def progressive(self) -> bool:
        return self.sof in _PROGRESSIVE

    @property
    def baseline(self) -> bool:
        return self.sof in _BASELINE


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def is_png(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n"


def _exif_orientation(payload: bytes) -> int:
    """Orientation tag (0x0112) from an APP1 Exif payload; 1 when absent or unreadable."""
    if not payload.startswith(b"Exif\0\0") or len(payload) < 14:
        return 1
    tiff = payload[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for i in range(count):
            tag, typ, _n = struct.unpack_from(order + "HHI", tiff, ifd + 2 + 12 * i)
            if tag == 0x0112 and typ == 3:
                (value,) = struct.unpack_from(order + "H", tiff, ifd + 2 + 12 * i + 8)
                return value if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


def read_jpeg_info(data: bytes) -> JpegInfo | None:
    """Header facts, or ``None`` when the bytes are not a JPEG with a frame header."""
    if not is_jpeg(data):
        return None
    pos, orientation = 2, 1
    size = len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        segment = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1:
            orientation = _exif_orientation(segment) if orientation == 1 else orientation
        elif marker in _SOF:
            if len(segment) < 6:
                return None
            _precision, height, width, components = struct.unpack_from(">BHHB", segment)
            # Some cameras append bytes after EOI, so look for it near the end, not at the very end.
            has_eoi = data.rfind(b"\xff\xd9", max(pos, size - 4096)) != -1
            return JpegInfo(width, height, components, marker, orientation, has_eoi)
        elif marker == 0xDA:
            return None
        pos += 2 + length
    return None
