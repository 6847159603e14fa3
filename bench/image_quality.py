"""What the transcode costs in picture quality, and what each JPEG decode scale costs in time.

Quality: every image's output (ours; im2rec's recipe: full decode, ``cv2.resize``
bilinear, encode at the same quality; and the YUV round trip through libturbojpeg
this project measured and did not adopt) is compared with a float reference, an area-averaged resize of the original
pixels to the same size.  PSNR over all channels and SSIM on luma (Wang et al.
2004: 11x11 Gaussian window, sigma 1.5), averaged over the images.

Decode scales: libjpeg-turbo decodes at M/8 for any M, but only the 8/8, 4/8, 2/8
and 1/8 inverse DCTs have SIMD code.  This times each scale on the same
images, to YUV planes and to BGR, which is why the packer uses only those four
(through OpenCV, which offers exactly those).

Least work: the compute no packer can avoid with this codec, image by image:
the fastest (timed, not assumed) of decoding at each scale M/8 that keeps the
short side, then resizing and encoding, through BGR as the packer does or
staying in YUV; an image kept as it is still decoded at 1/8 to check it.  Against the bare loop's own work on the same
images, that bounds what doing less work can buy (issue 14's 1.3x).
"""

from __future__ import annotations

import itertools
import statistics
import tarfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from bench import turbojpeg
from bench.bare_loop import bare_loop
from bootstrap.pack.imaging import ImageOptions, interpolation, target_size, transcode
from bootstrap.pack.jpeginfo import read_jpeg_info
from scripts.synthetic_imagenet import TRAIN

Image = npt.NDArray[Any]


def train_images(src: Path, limit: int) -> Iterator[bytes]:
    """The first ``limit`` JPEGs of the train archive (a tar of class tars)."""
    seen = 0
    with tarfile.open(src / TRAIN) as outer:
        for member in outer:
            reader = outer.extractfile(member)
            assert reader is not None
            with tarfile.open(fileobj=reader) as inner:
                for item in inner:
                    file = inner.extractfile(item)
                    if file is None:
                        continue
                    yield file.read()
                    seen += 1
                    if seen == limit:
                        return


def psnr(a: Image, b: Image) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else float(10 * np.log10(255**2 / mse))


def ssim(a: Image, b: Image) -> float:
    """Mean SSIM of the luma of two BGR images."""

    def luma(img: Image) -> Image:
        return cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_BGR2GRAY).astype(np.float64)

    x, y = luma(a), luma(b)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(img: Image) -> Image:
        return cv2.GaussianBlur(img, (11, 11), 1.5)

    mx, my = blur(x), blur(y)
    vx: Image = blur(x * x) - mx * mx
    vy: Image = blur(y * y) - my * my
    cov: Image = blur(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(index.mean())


def _im2rec_recipe(data: bytes, quality: int) -> bytes:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    return bytes(cv2.imencode(".jpg", cv2.resize(img, target_size(w, h, 256, False)),
                              [cv2.IMWRITE_JPEG_QUALITY, quality])[1])  # fmt: skip


def _yuv_recipe(codec: turbojpeg.Codec, data: bytes, quality: int, num: int = 8) -> bytes:
    """The YUV round trip this project measured and did not adopt: planes decoded (at ``num``/8), each resized,
    compressed 4:2:0."""
    header = codec.header(data)
    width, height = _scaled(header, num)
    y, cb, cr = codec.decode_yuv(data, header, width, height)
    tw, th = target_size(header.width, header.height, 256, False)
    cw, ch = codec.chroma_size(tw, th)
    sub_w = -(-width * cb.shape[1] // y.shape[1])
    sub_h = -(-height * cb.shape[0] // y.shape[0])
    chroma = [cv2.resize(c[:sub_h, :sub_w], (cw, ch), interpolation=cv2.INTER_LINEAR) for c in (cb, cr)]
    luma = cv2.resize(y[:height, :width], (tw, th), interpolation=cv2.INTER_LINEAR)
    return codec.encode_yuv420([luma, *chroma], quality)


def _bgr_recipe(codec: turbojpeg.Codec, data: bytes, quality: int, num: int) -> bytes:
    """Ours with libturbojpeg's decoder at any ``num``/8: decode to BGR, resize as the packer does, encode."""
    header = codec.header(data)
    img = codec.decode_bgr(data, *_scaled(header, num))
    tw, th = target_size(header.width, header.height, 256, False)
    small = cv2.resize(img, (tw, th), interpolation=interpolation(img.shape[1] / tw))
    return bytes(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])[1])


def bench_quality(src: Path, images: int = 300, quality: int = 90) -> dict[str, Any]:
    opts = ImageOptions(resize=256, quality=quality)
    ways: dict[str, Callable[[bytes], bytes]] = {
        "ours": lambda d: transcode(d, opts),
        "im2rec recipe": lambda d: _im2rec_recipe(d, quality),
    }
    if turbojpeg.available():
        codec = turbojpeg.Codec()
        ways["yuv round trip (not adopted)"] = lambda d: _yuv_recipe(codec, d, quality)
    scores: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    compared = 0
    for data in train_images(src, images):
        original = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).astype(np.float32)
        h, w = original.shape[:2]
        size = target_size(w, h, 256, False)
        if size == (w, h):
            continue  # copied as they are: nothing to compare
        reference = cv2.resize(original, size, interpolation=cv2.INTER_AREA)
        for name, way in ways.items():
            out = cv2.imdecode(np.frombuffer(way(data), np.uint8), cv2.IMREAD_COLOR)
            scores[name].append((psnr(out, reference), ssim(out, reference)))
        compared += 1
    return {
        "images": compared,
        "reference": "float area resize of the original pixels",
        **{name: {"psnr_db": round(statistics.mean(s[0] for s in got), 2),
                  "ssim": round(statistics.mean(s[1] for s in got), 4)} for name, got in scores.items()},
    }  # fmt: skip


def bench_decode_scales(src: Path, images: int = 200, repeat: int = 5) -> dict[str, Any]:
    """Milliseconds per decode of the 500-pixel-wide images at each M/8, to YUV and to BGR; OpenCV full for scale."""
    if not turbojpeg.available():
        return {"skipped": "libturbojpeg.so.0 is not installed"}
    sample = [d for d in train_images(src, images * 3) if _width(d) == 500][:images]
    codec = turbojpeg.Codec()
    out: dict[str, Any] = {"images": len(sample), "opencv_bgr_8/8_ms": _time(
        lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR), sample, repeat)}  # fmt: skip
    for num in (8, 7, 6, 5, 4, 2, 1):

        def yuv(d: bytes, num: int = num) -> None:
            header = codec.header(d)
            codec.decode_yuv(d, header, *_scaled(header, num))

        def bgr(d: bytes, num: int = num) -> None:
            codec.decode_bgr(d, *_scaled(codec.header(d), num))

        out[f"yuv_{num}/8_ms"] = _time(yuv, sample, repeat)
        out[f"bgr_{num}/8_ms"] = _time(bgr, sample, repeat)
    codec.close()
    return out


def bench_least_work(src: Path, images: int = 600, repeat: int = 5) -> dict[str, Any]:
    """Milliseconds per image on one thread, best of ``repeat``, of the least work (module docstring) and of the bare
    loop's work (full decode, bilinear resize, encode), over every 8th of the train archive's first images."""
    if not turbojpeg.available():
        return {"skipped": "libturbojpeg.so.0 is not installed"}
    sample = list(itertools.islice(train_images(src, images * 8), 0, None, 8))
    codec, least, bare = turbojpeg.Codec(), 0.0, 0.0
    fastest: dict[str, int] = {}
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # as in the packer's workers: one process per core
    for data in sample:
        least += _least_work(codec, data, repeat, fastest)
        bare += _best(partial(bare_loop, data), repeat)
    cv2.setNumThreads(threads)
    codec.close()
    return {"images": len(sample), "least_work_ms": round(least / len(sample) * 1000, 3),
            "bare_loop_work_ms": round(bare / len(sample) * 1000, 3),
            "fastest": fastest}  # fmt: skip


def _least_work(codec: turbojpeg.Codec, data: bytes, repeat: int, fastest: dict[str, int]) -> float:
    header = codec.header(data)
    if target_size(header.width, header.height, 256, False) == (header.width, header.height):
        fastest["kept"] = fastest.get("kept", 0) + 1  # kept as it is, once a 1/8 decode has shown it decodes
        return _best(lambda: codec.decode_yuv(data, header, *_scaled(header, 1)), repeat)
    allowed = [k for k in range(8, 0, -1) if min(_scaled(header, k)) >= 256]
    ways = [(f"{k}/8 {name}", partial(recipe, codec, data, 90, k))
            for k in allowed for name, recipe in (("BGR", _bgr_recipe), ("YUV", _yuv_recipe))]  # fmt: skip
    seconds, way = min((_best(fn, repeat), way) for way, fn in ways)
    fastest[way] = fastest.get(way, 0) + 1
    return seconds


def _best(fn: Callable[[], object], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return min(runs)


def _scaled(header: turbojpeg.Header, num: int) -> tuple[int, int]:
    return turbojpeg.scaled(header.width, (num, 8)), turbojpeg.scaled(header.height, (num, 8))


def _width(data: bytes) -> int:
    info = read_jpeg_info(data)
    return info.width if info is not None else 0


def _time(fn: Callable[[bytes], object], sample: list[bytes], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for data in sample:
            fn(data)
        runs.append((time.perf_counter() - start) / len(sample) * 1000)
    return round(statistics.median(runs), 3)


def bench_readers(recordio: Path, seconds: float = 10.0) -> dict[str, Any]:
    """Records/s through ``bootstrap.readers`` (warm page cache: the reader's own cost), bytes and decoded."""
    import random

    from bootstrap.readers import RecordIODataset, RecordIOStream

    rec, idx = recordio / "train.rec", recordio / "train.idx"
    out: dict[str, Any] = {"records": len(RecordIODataset(rec, idx))}
    for decode in (None, "rgb"):
        label = decode or "bytes"
        dataset = RecordIODataset(rec, idx, decode=decode)
        order = list(range(len(dataset)))
        random.Random(0).shuffle(order)
        out[f"map_style_random_{label}_per_s"] = _rate(partial(_by_index, dataset, order), seconds)
        out[f"stream_{label}_per_s"] = _rate(RecordIOStream(rec, idx, decode=decode).__iter__, seconds)
    return out


def _by_index(dataset: Any, order: list[int]) -> Iterator[object]:
    return (dataset[i] for i in order)


def _rate(items: Callable[[], Iterator[object]], seconds: float) -> float:
    """Items per second over whole passes, for at least ``seconds``."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in items():
            count += 1
    return round(count / (time.perf_counter() - start))
