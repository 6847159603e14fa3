"""The bare loop: the least a packer does with OpenCV, defined once.

Full decode, a bilinear resize of the short side to 256, a JPEG encode at
quality 90.  The pack benchmark's floor (``bench.run.FLOOR``: one process per
CPU over the extracted files) and the least-work row (one image at a time)
both time this function, so they time the same work.
"""

from __future__ import annotations

import cv2
import numpy as np


def bare_loop(data: bytes) -> int:
    """One image through the bare loop; the encoded size."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    size = (256, h * 256 // w) if w < h else (w * 256 // h, 256)
    return len(cv2.imencode(".jpg", cv2.resize(img, size), [cv2.IMWRITE_JPEG_QUALITY, 90])[1])
