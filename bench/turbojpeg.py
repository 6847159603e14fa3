"""The benchmark's TurboJPEG (libjpeg-turbo) binding through ctypes: JPEG to and from YUV planes, at any scale.

It answers two questions issue 14 asked, by measurement (``bench/image_quality.py``):

- Does decoding at M/8 (any M, which OpenCV cannot) beat OpenCV's 1/1, 1/2, 1/4,
  1/8 on ImageNet's typical 500x375 photos?  No: only 8/8, 4/8, 2/8 and 1/8 have
  SIMD inverse DCTs, and a 500x375 photo decodes slower at 6/8 or 7/8 than at 8/8.
- Does staying in YUV (decode to planes, resize each, compress from them) beat
  the BGR round trip?  Not by enough: whole-pack throughput did not improve
  (README, "How images are stored"), so the packer does not use it.

The library is ``libturbojpeg.so.0`` (Debian ``libturbojpeg0``; Fedora and
Amazon Linux ``turbojpeg``); without it ``available()`` is false and those
benchmarks are skipped.  Every call returns -1 on failure; a warning (corrupt
data that still decodes) is not a failure here, a fatal error raises
``TurboJPEGError``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

TJPF_BGR = 1
TJSAMP_420, TJSAMP_GRAY = 2, 3
TJCS_YCbCr = 1
TJERR_WARNING = 0


class TurboJPEGError(Exception):
    """The library could not decode or encode the image; the message is its own."""


@dataclass(frozen=True)
class Header:
    width: int
    height: int
    subsampling: int
    colorspace: int


@functools.cache
def _library() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("turbojpeg") or "libturbojpeg.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    vp, ip, ubp = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_ubyte)
    ulong = ctypes.c_ulong
    signatures = {
        "tjInitDecompress": ([], vp),
        "tjInitCompress": ([], vp),
        "tjDestroy": ([vp], ctypes.c_int),
        "tjDecompressHeader3": ([vp, ctypes.c_char_p, ulong, ip, ip, ip, ip], ctypes.c_int),
        "tjDecompress2": ([vp, ctypes.c_char_p, ulong, vp, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                           ctypes.c_int], ctypes.c_int),
        "tjDecompressToYUVPlanes": ([vp, ctypes.c_char_p, ulong, ctypes.POINTER(vp), ctypes.c_int, ip, ctypes.c_int,
                                     ctypes.c_int], ctypes.c_int),
        "tjCompressFromYUVPlanes": ([vp, ctypes.POINTER(vp), ctypes.c_int, ip, ctypes.c_int, ctypes.c_int,
                                     ctypes.POINTER(ubp), ctypes.POINTER(ulong), ctypes.c_int, ctypes.c_int],
                                    ctypes.c_int),
        "tjFree": ([ubp], None),
        "tjPlaneWidth": ([ctypes.c_int, ctypes.c_int, ctypes.c_int], ctypes.c_int),
        "tjPlaneHeight": ([ctypes.c_int, ctypes.c_int, ctypes.c_int], ctypes.c_int),
        "tjGetErrorStr2": ([vp], ctypes.c_char_p),
        "tjGetErrorCode": ([vp], ctypes.c_int),
    }  # fmt: skip
    for function, (args, result) in signatures.items():
        getattr(lib, function).argtypes = args
        getattr(lib, function).restype = result
    return lib


def available() -> bool:
    return _library() is not None


def scaled(size: int, factor: tuple[int, int]) -> int:
    """TurboJPEG's TJSCALED: the size of a dimension decoded at ``factor`` (rounded up); the decode functions take
    the scaled size and pick the factor that gives it."""
    num, denom = factor
    return (size * num + denom - 1) // denom


class Codec:
    """One decompressor and one compressor; make one per process (handles are not shared across a fork)."""

    def __init__(self) -> None:
        self.flags = 0
        lib = _library()
        if lib is None:
            raise TurboJPEGError("libturbojpeg.so.0 is not installed")
        self._lib = lib
        self._d, self._c = lib.tjInitDecompress(), lib.tjInitCompress()

    def close(self) -> None:
        self._lib.tjDestroy(self._d)
        self._lib.tjDestroy(self._c)

    def _check(self, handle: int, status: int) -> None:
        if status != 0 and self._lib.tjGetErrorCode(handle) != TJERR_WARNING:
            raise TurboJPEGError(self._lib.tjGetErrorStr2(handle).decode(errors="replace"))

    def header(self, data: bytes) -> Header:
        w, h, sub, cs = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        status = self._lib.tjDecompressHeader3(self._d, data, len(data), ctypes.byref(w), ctypes.byref(h),
                                               ctypes.byref(sub), ctypes.byref(cs))  # fmt: skip
        self._check(self._d, status)
        return Header(w.value, h.value, sub.value, cs.value)

    def decode_bgr(self, data: bytes, width: int, height: int) -> npt.NDArray[np.uint8]:
        """Decode at the scale that gives ``width`` x ``height`` (each from ``scaled``), as BGR like OpenCV."""
        out = np.empty((height, width, 3), np.uint8)
        status = self._lib.tjDecompress2(self._d, data, len(data), out.ctypes.data, width, width * 3, height,
                                         TJPF_BGR, self.flags)  # fmt: skip
        self._check(self._d, status)
        return out

    def decode_yuv(self, data: bytes, header: Header, width: int, height: int) -> list[npt.NDArray[np.uint8]]:
        """The Y, Cb and Cr planes at the scale that gives ``width`` x ``height``, chroma at the file's subsampling."""
        planes = self._planes(width, height, header.subsampling)
        pointers = (ctypes.c_void_p * 3)(*(p.ctypes.data for p in planes))
        strides = (ctypes.c_int * 3)(*(p.shape[1] for p in planes))
        status = self._lib.tjDecompressToYUVPlanes(self._d, data, len(data), pointers, width, strides, height,
                                                   self.flags)  # fmt: skip
        self._check(self._d, status)
        return planes

    def _planes(self, width: int, height: int, subsampling: int) -> list[npt.NDArray[np.uint8]]:
        """Buffers of the sizes the library writes (chroma rounded up to whole MCUs: ``tjPlaneWidth``/``Height``)."""
        lib = self._lib
        return [np.zeros((lib.tjPlaneHeight(c, height, subsampling), lib.tjPlaneWidth(c, width, subsampling)),
                         np.uint8) for c in range(3)]  # fmt: skip

    def _take(self, buffer: ctypes._Pointer[ctypes.c_ubyte], size: ctypes.c_ulong) -> bytes:
        try:
            return ctypes.string_at(buffer, size.value)
        finally:
            self._lib.tjFree(buffer)

    def chroma_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of a Cb or Cr plane of a 4:2:0 image of ``width`` x ``height``."""
        return self._lib.tjPlaneWidth(1, width, TJSAMP_420), self._lib.tjPlaneHeight(1, height, TJSAMP_420)

    def encode_yuv420(self, planes: Sequence[npt.NDArray[Any]], quality: int) -> bytes:
        """Compress 4:2:0 planes (Y, then Cb and Cr of ``chroma_size``) as a JPEG.

        The library reads whole MCUs: a Y plane of odd width or height is padded (edge replicated) to the plane
        size it reads, never read past its end (which would make the output depend on the memory after it).
        """
        h, w = planes[0].shape
        if any(p.shape[::-1] != self.chroma_size(w, h) for p in planes[1:]):
            raise TurboJPEGError(f"chroma planes must be {self.chroma_size(w, h)} for a {w}x{h} 4:2:0 image")
        pw, ph = self._lib.tjPlaneWidth(0, w, TJSAMP_420), self._lib.tjPlaneHeight(0, h, TJSAMP_420)
        y = (
            cv2.copyMakeBorder(planes[0], 0, ph - h, 0, pw - w, cv2.BORDER_REPLICATE)
            if (pw, ph) != (w, h)
            else planes[0]
        )
        planes = [np.ascontiguousarray(p, np.uint8) for p in (y, *planes[1:])]
        pointers = (ctypes.c_void_p * 3)(*(p.ctypes.data for p in planes))
        strides = (ctypes.c_int * 3)(*(p.shape[1] for p in planes))
        buffer, size = ctypes.POINTER(ctypes.c_ubyte)(), ctypes.c_ulong()
        status = self._lib.tjCompressFromYUVPlanes(self._c, pointers, w, strides, h, TJSAMP_420,
                                                   ctypes.byref(buffer), ctypes.byref(size), quality,
                                                   self.flags)  # fmt: skip
        self._check(self._c, status)
        return self._take(buffer, size)
