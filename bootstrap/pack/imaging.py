"""Turn one source image into the bytes stored in a record.

Policy, chosen for training data that every reader can decode:

- Genuine baseline 3-channel JPEGs that need no resize, crop or rotation are
  copied as they are (no second generation of JPEG loss), after a cheap
  1/8-scale decode proves they are intact.
- Everything else is decoded with OpenCV, which applies EXIF orientation and
  converts CMYK/YCCK, grayscale and PNG content to 3-channel colour, then
  resized and re-encoded.  Large JPEGs are decoded at 1/2, 1/4 or 1/8 scale in
  the DCT domain when that still leaves the short side at least the target,
  which is most of the speed-up over im2rec on big photos; the remaining
  factor, always below 2, is done bilinearly (area averaging only above 2x).
- Output size follows im2rec: short side = ``resize``, long side =
  ``long * resize // short``.  Unlike im2rec, smaller images are not
  upscaled unless asked.
- Anything that cannot be decoded raises ``ImageError`` with a reason; the
  caller lists it, it never disappears silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from bootstrap.pack.jpeginfo import is_jpeg, is_png, read_jpeg_info
from bootstrap.settings import default

_REDUCED_COLOR = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  8: cv2.IMREAD_REDUCED_COLOR_8}  # fmt: skip
_REDUCED_GRAY = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}  # fmt: skip


class ImageError(Exception):
    """This image cannot be packed; the message is the reason shown in the failures list."""


@dataclass(frozen=True)
class ImageOptions:
    """How each image is transcoded; defaults and ranges are the settings' (``bootstrap.settings``)."""

    resize: int = default("resize")
    """Target short side in pixels; 0 keeps the size."""
    center_crop: bool = default("center_crop")
    quality: int = default("quality")
    """JPEG quality 1-100, or PNG compression 0-9 with ``encoding='.png'``."""
    encoding: str = default("encoding")
    color: int = default("color")
    """1 colour, 0 grayscale, -1 unchanged (as the ``cv2.imread`` flag in im2rec)."""
    pass_through: bool = default("pass_through")
    """Copy every intact image as it is (still converting CMYK, PNG and gray, and listing undecodable ones)."""
    upscale: bool = default("upscale")


def target_size(width: int, height: int, resize: int, upscale: bool) -> tuple[int, int]:
    """Output ``(width, height)`` for a ``width``x``height`` image, by im2rec's rule."""
    short = min(width, height)
    if resize <= 0 or (short <= resize and not upscale):
        return width, height
    if width <= height:
        return resize, height * resize // width
    return width * resize // height, resize


def _reduction(short_side: int, resize: int) -> int:
    """Largest DCT scale-down factor that keeps the short side >= ``resize``."""
    if resize <= 0:
        return 1
    for k in (8, 4, 2):
        if short_side // k >= resize:
            return k
    return 1


def interpolation(factor: float) -> int:
    """Bilinear below a 2x shrink, where it is as good and 5x faster; area averaging above, against aliasing.

    After a DCT-domain reduction the factor left is always below 2, so area
    averaging only runs for sources that cannot be reduced (PNG, CMYK at 1/1).
    """
    return cv2.INTER_AREA if factor >= 2.0 else cv2.INTER_LINEAR


def _encode(img: npt.NDArray[Any], opts: ImageOptions) -> bytes:
    if opts.encoding == ".jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, opts.quality]
    else:
        params = [cv2.IMWRITE_PNG_COMPRESSION, min(opts.quality, 9)]
    ok, buf = cv2.imencode(opts.encoding, img, params)
    if not ok:
        raise ImageError(f"encoding to {opts.encoding} failed")
    return buf.tobytes()


def _center_crop(img: npt.NDArray[Any]) -> npt.NDArray[Any]:
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return img[top : top + side, left : left + side]


def transcode(data: bytes, opts: ImageOptions) -> bytes:
    """The bytes to store for one image; raises ``ImageError`` with the reason it cannot be used."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    info = read_jpeg_info(data)
    if is_jpeg(data) and info is None:
        raise ImageError("corrupt JPEG: no readable frame header")
    if info is not None and not info.has_eoi:
        raise ImageError("truncated JPEG: no end-of-image marker")
    buf = np.frombuffer(data, np.uint8)

    if info is not None:
        w, h = (info.height, info.width) if info.orientation >= 5 else (info.width, info.height)
        genuine = info.components == 3 and info.baseline and info.orientation == 1
        same_size = target_size(w, h, opts.resize, opts.upscale) == (w, h) and not (opts.center_crop and w != h)
        if genuine and opts.color == 1 and opts.encoding == ".jpg" and (opts.pass_through or same_size):
            if cv2.imdecode(buf, cv2.IMREAD_REDUCED_GRAYSCALE_8) is None:
                raise ImageError("corrupt JPEG: OpenCV cannot decode it")
            return data
        k = _reduction(min(w, h), opts.resize) if not opts.pass_through else 1
    else:
        w = h = 0
        k = 1

    if opts.color == 1:
        flag = _REDUCED_COLOR[k]
    elif opts.color == 0:
        flag = _REDUCED_GRAY[k]
    else:
        flag, k = cv2.IMREAD_UNCHANGED, 1
    img = cv2.imdecode(buf, flag)
    if img is None:
        kind = "JPEG" if info else "PNG" if is_png(data) else "image (unknown format)"
        raise ImageError(f"corrupt {kind}: OpenCV cannot decode it")
    if info is None:
        h, w = img.shape[:2]

    if opts.center_crop:
        img = _center_crop(img)
        w = h = min(w, h)
    if not opts.pass_through:
        tw, th = target_size(w, h, opts.resize, opts.upscale)
        if (img.shape[1], img.shape[0]) != (tw, th):
            img = cv2.resize(img, (tw, th), interpolation=interpolation(img.shape[1] / tw))
    return _encode(img, opts)
