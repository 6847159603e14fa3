"""Each awkward real-world image case, and the resize policy."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bootstrap.pack.imaging import ImageError, ImageOptions, target_size, transcode
from bootstrap.pack.jpeginfo import read_jpeg_info
from scripts.synthetic_imagenet import awkward_image, photo

RNG = np.random.default_rng(7)
IMG = photo(RNG, 300, 200, hue=3)
OPTS = ImageOptions(resize=128, quality=90)


def decode(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None
    return img


def rgb_jpeg(data: bytes) -> np.ndarray:
    info = read_jpeg_info(data)
    assert info is not None and info.components == 3 and info.baseline
    img = decode(data)
    assert img.ndim == 3 and img.shape[2] == 3
    return img


@pytest.mark.parametrize("case", ["cmyk", "png", "gray", "progressive"])
def test_awkward_inputs_become_baseline_rgb_jpegs(case: str) -> None:
    out = rgb_jpeg(transcode(awkward_image(case, IMG), OPTS))
    assert out.shape[:2] == (128, 192)


def test_cmyk_colours_survive() -> None:
    out = rgb_jpeg(transcode(awkward_image("cmyk", IMG), ImageOptions(resize=0, quality=95)))
    assert np.abs(out.astype(int) - IMG.astype(int)).mean() < 6


def test_exif_rotation_is_applied() -> None:
    out = rgb_jpeg(transcode(awkward_image("exif_rotated", IMG), OPTS))
    assert out.shape[:2] == (192, 128)  # portrait after the 90-degree turn
    assert read_jpeg_info(transcode(awkward_image("exif_rotated", IMG), OPTS)).orientation == 1  # type: ignore[union-attr]


@pytest.mark.parametrize(("case", "reason"), [("truncated", "truncated JPEG"), ("empty", "empty file")])
def test_undecodable_inputs_raise_with_reason(case: str, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        transcode(awkward_image(case, IMG), OPTS)


def test_random_bytes_named_jpeg_raise() -> None:
    with pytest.raises(ImageError, match="cannot decode"):
        transcode(b"\x00garbage" * 100, OPTS)


def test_small_genuine_jpeg_is_copied_not_upscaled() -> None:
    _ok, buf = cv2.imencode(".jpg", IMG[:100, :120], [cv2.IMWRITE_JPEG_QUALITY, 80])
    data = buf.tobytes()
    assert transcode(data, ImageOptions(resize=128)) == data


def test_upscale_when_asked() -> None:
    _ok, buf = cv2.imencode(".jpg", IMG[:100, :120])
    assert decode(transcode(buf.tobytes(), ImageOptions(resize=128, upscale=True))).shape[:2] == (128, 153)


def test_large_image_uses_reduced_decode_and_matches_full_decode() -> None:
    big = photo(RNG, 2400, 1800, hue=1)
    _ok, buf = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 92])
    out = decode(transcode(buf.tobytes(), ImageOptions(resize=256, quality=95)))
    assert out.shape[:2] == (256, 341)
    reference = cv2.resize(big, (341, 256), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - reference.astype(int)).mean() < 4


@pytest.mark.parametrize(
    ("size", "resize", "expected"),
    [((500, 375), 256, (341, 256)), ((375, 500), 256, (256, 341)), ((200, 100), 256, (200, 100)),
     ((4000, 3000), 256, (341, 256)), ((640, 480), 0, (640, 480))],
)  # fmt: skip
def test_target_size_follows_im2rec(size: tuple[int, int], resize: int, expected: tuple[int, int]) -> None:
    assert target_size(*size, resize, upscale=False) == expected


def test_center_crop_and_png_encoding() -> None:
    out = decode(transcode(awkward_image("progressive", IMG), ImageOptions(resize=64, center_crop=True,
                                                                            encoding=".png", quality=3)))  # fmt: skip
    assert out.shape[:2] == (64, 64)


def test_pass_through_keeps_large_genuine_jpeg() -> None:
    _ok, buf = cv2.imencode(".jpg", IMG)
    assert transcode(buf.tobytes(), ImageOptions(resize=64, pass_through=True)) == buf.tobytes()
    converted = transcode(awkward_image("cmyk", IMG), ImageOptions(resize=64, pass_through=True))
    assert rgb_jpeg(converted).shape[:2] == (200, 300)  # converted, not resized


def test_grayscale_output_when_color_zero() -> None:
    assert decode(transcode(awkward_image("progressive", IMG), ImageOptions(resize=100, color=0))).ndim == 2
