"""Read the packed RecordIO from training code, without mxnet.

Two readers over the same files (``train.rec`` + ``train.idx``, or the parts
``train_0.rec`` ... with ``train.global.idx``):

- ``RecordIODataset``: map-style, one ``pread`` per record by its index offset,
  for shuffling every epoch.  PyTorch's ``DataLoader`` takes it as it is (it
  needs only ``__len__`` and ``__getitem__``), with workers.
- ``RecordIOStream``: sequential, reading in large blocks, for a pass in file
  order; ``shard(rank, world_size)`` gives each process a contiguous share,
  and inside a ``DataLoader`` each worker takes a share of that.
  ``torch_iterable()`` wraps it as the ``IterableDataset`` a ``DataLoader``
  wants.
- ``dali_pipeline()``: NVIDIA DALI's own reader of these files
  (``readers.mxnet`` over the parts and the global idx), decoding on the GPU.

``split_files(recordio_dir, split)`` finds a split's files, one .rec or parts.

Items are ``(image, label)``: the stored JPEG bytes, or with ``decode`` an HxWx3
uint8 array (``"rgb"`` or ``"bgr"``, by OpenCV), then ``transform`` if given.
PyTorch is optional: this module imports without it, and only
``torch_iterable`` needs it (and says so).  The record layout is
``bootstrap.pack.recordio``'s: a magic, a length with a continuation flag, the
payload padded to 4 bytes; each payload is mxnet's IRHeader (flag, float
label, id, id2) and the image.
"""

from __future__ import annotations

import importlib
import io
import os
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bootstrap.pack.plan import global_idx_name, part_names
from bootstrap.pack.recordio import iter_records, read_record, unpack_image

Item = tuple[Any, int]
BLOCK = 16 << 20
"""Sequential reads in 16 MiB blocks: few, large I/Os, as a volume restored from a snapshot likes them."""


def split_files(recordio: Path, split: str) -> tuple[list[Path], Path, list[Path]] | None:
    """(rec files, the idx over them, lst files) of one split, one file or parts with a global idx; None if absent."""
    single = part_names(split, 1)[0]
    if (recordio / single.rec).exists():
        return [recordio / single.rec], recordio / single.idx, [recordio / single.lst]
    parts = sorted(recordio.glob(f"{split}_*.rec"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not parts:
        return None
    names = part_names(split, len(parts))
    return ([recordio / n.rec for n in names], recordio / global_idx_name(split), [recordio / n.lst for n in names])


def _parts(rec: Path | Sequence[Path], idx: Path) -> tuple[list[Path], list[tuple[int, int]]]:
    """The part files, and (key, global offset) per record in idx order (a part's offsets follow the parts before)."""
    parts = [Path(rec)] if isinstance(rec, str | Path) else [Path(p) for p in rec]
    entries = []
    for line in Path(idx).read_text().splitlines():
        if line.strip():
            key, offset = line.split("\t")
            entries.append((int(key), int(offset)))
    return parts, entries


class _Decode:
    """The stored bytes, or an OpenCV decode to RGB or BGR (a class, not a closure, so a spawned worker can take it)."""

    def __init__(self, mode: str | None) -> None:
        if mode not in (None, "rgb", "bgr"):
            raise ValueError(f"decode={mode!r}: None (the JPEG bytes), 'rgb' or 'bgr'")
        self.mode = mode

    def __call__(self, image: bytes) -> Any:
        if self.mode is None:
            return image
        import cv2
        import numpy as np

        img = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError("a record's image does not decode (run `python -m bootstrap verify`)")
        return img[..., ::-1].copy() if self.mode == "rgb" else img


class _Files:
    """The parts, opened lazily in each process (a file object must not cross a fork into a loader worker)."""

    def __init__(self, parts: list[Path]) -> None:
        self.parts = parts
        self.starts = [0]
        for part in parts[:-1]:
            self.starts.append(self.starts[-1] + part.stat().st_size)
        self._pid, self._fds = -1, [-1] * len(parts)

    def locate(self, offset: int) -> tuple[int, int]:
        """(part number, offset inside it) of a global offset."""
        part = bisect_right(self.starts, offset) - 1
        return part, offset - self.starts[part]

    def fd(self, part: int) -> int:
        if self._pid != os.getpid():
            self._pid, self._fds = os.getpid(), [-1] * len(self.parts)
        if self._fds[part] < 0:
            self._fds[part] = os.open(self.parts[part], os.O_RDONLY)
        return self._fds[part]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pid": -1, "_fds": [-1] * len(self.parts)}

    def close(self) -> None:
        """Close this process's descriptors (a forked copy's belong to the parent and stay open)."""
        if self._pid == os.getpid():
            for fd in self._fds:
                if fd >= 0:
                    os.close(fd)
        self._pid, self._fds = -1, [-1] * len(self.parts)

    def __del__(self) -> None:
        self.close()


class RecordIODataset:
    """``dataset[i]`` is the i-th record of the idx as ``(image, label)``; ``len(dataset)`` the number of records."""

    def __init__(self, rec: Path | Sequence[Path], idx: Path, *, decode: str | None = None,
                 transform: Callable[[Any], Any] | None = None) -> None:  # fmt: skip
        parts, self._entries = _parts(rec, idx)
        self._files, self._decode, self._transform = _Files(parts), _Decode(decode), transform
        total = self._files.starts[-1] + parts[-1].stat().st_size
        # a record ends where the next one, the next part or the last file begins
        self._bounds = sorted({offset for _, offset in self._entries} | set(self._files.starts[1:]) | {total})

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        """Close the open parts now (garbage collection closes them too; reading again reopens them)."""
        self._files.close()

    def key(self, i: int) -> int:
        """The record's key in the idx (its line in the .lst)."""
        return self._entries[i][0]

    def __getitem__(self, i: int) -> Item:
        if not -len(self) <= i < len(self):
            raise IndexError(f"record {i} of {len(self)}")
        offset = self._entries[i][1]
        end = self._bounds[bisect_right(self._bounds, offset)]
        part, local = self._files.locate(offset)
        payload = read_record(io.BytesIO(os.pread(self._files.fd(part), end - offset, local)))
        if payload is None:
            raise IndexError(f"record {i} is past the end of {self._files.parts[part]}")
        return _item(payload, self._decode, self._transform)


class RecordIOStream:
    """The records in file order, read in ``BLOCK``-sized reads; iterate it once per epoch."""

    def __init__(self, rec: Path | Sequence[Path], idx: Path, *, decode: str | None = None,
                 transform: Callable[[Any], Any] | None = None, rank: int = 0,
                 world_size: int = 1) -> None:  # fmt: skip
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self._args = (rec, idx, decode, transform)
        parts, self._entries = _parts(rec, idx)
        self._files, self._decode, self._transform = _Files(parts), _Decode(decode), transform
        self.rank, self.world_size = rank, world_size

    def shard(self, rank: int, world_size: int) -> RecordIOStream:
        """This reader for process ``rank`` of ``world_size``: a contiguous share of the records."""
        rec, idx, decode, transform = self._args
        return RecordIOStream(rec, idx, decode=decode, transform=transform, rank=rank, world_size=world_size)

    def _share(self) -> tuple[int, int]:
        """[first, end) of the records this process, and inside it this loader worker, reads."""
        shares, index = self.world_size, self.rank
        worker = _torch_worker()
        if worker is not None:  # split this rank's share again among the DataLoader's workers
            shares, index = shares * worker[1], index * worker[1] + worker[0]
        n = len(self._entries)
        return n * index // shares, n * (index + 1) // shares

    def __len__(self) -> int:
        first, end = self._share()
        return end - first

    def __iter__(self) -> Iterator[Item]:
        first, end = self._share()
        wanted = sorted(offset for _, offset in self._entries[first:end])
        if not wanted:
            return
        part, local = self._files.locate(wanted[0])
        left = len(wanted)
        while left:
            with open(self._files.parts[part], "rb", buffering=BLOCK) as f:
                f.seek(local)
                for _, payload in iter_records(f):
                    yield _item(payload, self._decode, self._transform)
                    left -= 1
                    if not left:
                        return
            part, local = part + 1, 0


def _item(payload: bytes, decode: Callable[[bytes], Any], transform: Callable[[Any], Any] | None) -> Item:
    header, image = unpack_image(payload)
    out = decode(image)
    return (transform(out) if transform else out), int(header.label)


def _torch_worker() -> tuple[int, int] | None:
    """(worker id, worker count) inside a PyTorch DataLoader worker; ``None`` elsewhere or without torch."""
    try:
        from torch.utils.data import get_worker_info
    except ImportError:
        return None
    info = get_worker_info()
    return None if info is None else (info.id, info.num_workers)


def torch_iterable(stream: RecordIOStream) -> Any:
    """``stream`` as a ``torch.utils.data.IterableDataset`` (what a ``DataLoader`` needs to treat it as a stream)."""
    try:
        from torch.utils.data import IterableDataset
    except ImportError:
        raise ImportError("torch_iterable needs PyTorch: pip install torch (the readers themselves do not)") from None

    class _Stream(IterableDataset):  # type: ignore[misc]
        def __iter__(self) -> Iterator[Item]:
            return iter(stream)

        def __len__(self) -> int:
            return len(stream)

    return _Stream()


IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def dali_pipeline(recordio: Path, split: str = "train", *, batch_size: int, rank: int = 0, world_size: int = 1,
                  size: int = 224, training: bool = True, device: str = "mixed", device_id: int | None = 0,
                  num_threads: int = 4, seed: int = 42) -> Any:  # fmt: skip
    """A built DALI pipeline over a split: ``readers.mxnet`` (the parts and the global idx), decode, augment, normalise.

    Each ``run()`` gives ``(images, labels)``: float CHW images normalised with
    ImageNet's mean and std, and the labels.  Training: random-resized-crop to
    ``size`` (the crop fused into the decode, ``decoders.image_random_crop``
    then ``resize``, as NVIDIA's ResNet-50 example does it, so only the crop
    is decoded), random horizontal flip, records shuffled in a buffer;
    otherwise: resize the short side to ``size / 0.875`` and centre-crop.
    ``rank`` of ``world_size`` picks this process's shard.  ``device="mixed"``
    decodes with nvJPEG on GPU ``device_id``; ``device="cpu"`` with
    ``device_id=None`` runs without a GPU (as the tests do).  Wrap it with
    ``nvidia.dali.plugin.pytorch.DALIGenericIterator(pipe, ["images", "labels"], reader_name="reader")``.
    """
    try:  # typed as Any: DALI's own stubs do not describe its operators
        dali: Any = importlib.import_module("nvidia.dali")
    except ImportError:
        raise ImportError("dali_pipeline needs NVIDIA DALI: pip install nvidia-dali-cuda120 (see the README)") from None
    found = split_files(Path(recordio), split)
    if found is None:
        raise FileNotFoundError(f"{recordio} has no {split}.rec (nor parts): is the dataset mounted?")
    recs, idx, _ = found
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")

    fn, types = dali.fn, dali.types

    @dali.pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)  # type: ignore[untyped-decorator]
    def pipeline() -> tuple[Any, Any]:
        jpegs, labels = fn.readers.mxnet(path=[str(p) for p in recs], index_path=[str(idx)], shard_id=rank,
                                         num_shards=world_size, random_shuffle=training, pad_last_batch=not training,
                                         name="reader")  # fmt: skip
        if training:
            images = fn.decoders.image_random_crop(jpegs, device=device, output_type=types.RGB)
            images = fn.resize(images, resize_x=size, resize_y=size)
            mirror: Any = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.decoders.image(jpegs, device=device, output_type=types.RGB)
            images = fn.resize(images, resize_shorter=round(size / 0.875))
            mirror = False
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", crop=(size, size),
                                          mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), mirror=mirror)  # fmt: skip
        return images, labels

    pipe = pipeline()
    pipe.build()
    return pipe
