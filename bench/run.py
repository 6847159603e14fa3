"""``make bench``: our engine against the tools people use by hand, on the same machine and images.

1. Pack throughput vs ``python -m mxnet.tools.im2rec`` (resize 256, quality 90, same
   process count, every image re-encoded), and the floor: a bare decode + resize +
   encode loop with the same libraries and process count.
2. End to end from the three archives to RecordIO vs the by-hand chain (untar the
   train tar and its class tars, move val images into class folders, im2rec --list,
   im2rec pack): wall clock and bytes read + written (block I/O of the whole process
   tree, page cache dropped first, as root).
3. Download vs ``curl -C -`` (one stream) and ``aria2c -x8`` against a local server
   that limits each connection's bandwidth.
4. Peak RSS of the whole process tree of ``bootstrap run`` at two dataset sizes.
5. Reading the packed train records back (``bootstrap bench-read``'s reader) from a
   loop-mounted ext4, page cache dropped, in file order and at random by index; and
   the packed bytes per record, which ``python -m scripts plan`` sizes volumes with.

6. Pack throughput again on the large-tail size mix (1 and 6 use the profiles of
   ``scripts.synthetic_imagenet``; the imagenet one is the headline).
7. Picture quality against a float resize, JPEG decode time per DCT scale, and
   the records/s of ``bootstrap.readers`` (``bench/image_quality.py``).

Each timing is the median of ``--runs`` runs.  Results go to bench/results.json and
the table between the bench markers in README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.image_quality import bench_decode_scales, bench_least_work, bench_quality, bench_readers
from bootstrap.dataset.devkit import read_devkit
from bootstrap.fetch.download import FetchOptions, chunk_size
from scripts import plan, synthetic_imagenet
from scripts.plan_data import load_prices
from scripts.synthetic_imagenet import DEVKIT, TRAIN, VAL, Spec, generate

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work"
PY = sys.executable
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Measure:
    seconds: float
    read_bytes: int
    written_bytes: int
    peak_rss: int


def _tree_rss(root: int) -> int:
    """Resident memory of ``root`` and all its descendants, in bytes."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        with contextlib.suppress(OSError):  # the process may have exited meanwhile
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        stack.extend(children.get(pid, []))
    return total


def drop_caches() -> bool:
    if os.geteuid() != 0:
        return False
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    return True


def measure(commands: Sequence[Sequence[str]], cwd: Path | None = None, cold: bool = True) -> Measure:
    """Run ``commands`` one after another; wall time, block I/O of all descendants, peak tree RSS."""
    if cold:
        drop_caches()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = 0
    start = time.monotonic()
    for command in commands:
        proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        done = threading.Event()

        def sample(pid: int = proc.pid, finished: threading.Event = done) -> None:
            nonlocal peak
            while not finished.wait(0.05):
                peak = max(peak, _tree_rss(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        done.set()
        sampler.join()
        if code != 0:
            raise RuntimeError(f"{' '.join(command)} exited {code}")
    subprocess.run(["sync"], check=True)
    seconds = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Measure(seconds, (after.ru_inblock - before.ru_inblock) * 512,
                   (after.ru_oublock - before.ru_oublock) * 512, peak)  # fmt: skip


def median(runs: int, once: Callable[[], Measure]) -> Measure:
    results = [once() for _ in range(runs)]
    return Measure(
        seconds=statistics.median(r.seconds for r in results),
        read_bytes=int(statistics.median(r.read_bytes for r in results)),
        written_bytes=int(statistics.median(r.written_bytes for r in results)),
        peak_rss=int(statistics.median(r.peak_rss for r in results)),
    )


# -- data -----------------------------------------------------------------------------


def dataset(name: str, spec: Spec) -> Path:
    """Generated once and cached under bench/work (the big images take a while to draw); redrawn when the spec or
    the generator's code changes."""
    root = WORK / name
    marker = root / "spec.json"
    generator = hashlib.sha256(Path(synthetic_imagenet.__file__).read_bytes()).hexdigest()[:16]
    want = {**asdict(spec), "generator": generator}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return root
    shutil.rmtree(root, ignore_errors=True)
    print(f"generating {name} ({spec.classes * spec.train_per_class} train images, {spec.profile} sizes)...")
    generate(root, spec)
    marker.write_text(json.dumps(want))
    return root


def bootstrap_cmd(stage: str, data: Path, src: Path, *extra: str) -> list[str]:
    """``python -m bootstrap <stage>`` with the flags that stage takes (each stage takes only its own)."""
    argv = [PY, "-m", "bootstrap", stage, "--data-dir", str(data), "--dataset-table", str(src / "dataset.json")]
    if stage in ("run", "fetch"):
        argv += ["--source", str(src)]
    if stage in ("run", "pack"):
        argv += ["--resize", "256", "--quality", "90", "--workers", str(os.cpu_count()), "--max-failure-rate", "0.01"]
    return [*argv, *extra]


def fresh_fetched(data: Path, src: Path) -> None:
    """A data dir whose archives were fetched and MD5-verified, as the download stage leaves it."""
    shutil.rmtree(data, ignore_errors=True)
    subprocess.run(bootstrap_cmd("fetch", data, src), check=True, stderr=subprocess.DEVNULL)


def extract_tree(src: Path, tree: Path) -> None:
    """The by-hand layout im2rec reads: train/<wnid>/*.JPEG."""
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "train").mkdir(parents=True)
    with tarfile.open(src / TRAIN) as outer:
        for member in outer:
            reader = outer.extractfile(member)
            assert reader is not None
            with tarfile.open(fileobj=reader) as inner:
                inner.extractall(tree / "train" / member.name[:-4], filter="data")


# -- 1. pack throughput ------------------------------------------------------------------


FLOOR = """
import sys
from multiprocessing import Pool
from pathlib import Path
from bench.bare_loop import bare_loop
def one(path):
    return bare_loop(Path(path).read_bytes())
files = sorted(str(p) for p in Path(sys.argv[1]).glob("*/*.JPEG"))
with Pool(int(sys.argv[2])) as pool:
    pool.map(one, files, chunksize=16)
"""


def bench_pack(src: Path, runs: int) -> dict[str, Any]:
    tree = WORK / "tree-pack"
    extract_tree(src, tree)
    images = len(list((tree / "train").glob("*/*.JPEG")))
    lst = WORK / "im2rec-pack"
    shutil.rmtree(lst, ignore_errors=True)
    lst.mkdir()
    subprocess.run([PY, "-m", "mxnet.tools.im2rec", "--list", "--recursive", str(lst / "train"),
                    str(tree / "train")], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    cpus = str(os.cpu_count())
    im2rec = median(runs, lambda: measure([[PY, "-m", "mxnet.tools.im2rec", "--resize", "256", "--quality", "90",
                                             "--num-thread", cpus, str(lst / "train"), str(tree / "train")]],
                                          cold=False))  # fmt: skip
    data = WORK / f"ours-pack-{src.name}"
    fresh_fetched(data, src)
    subprocess.run(bootstrap_cmd("organise", data, src), check=True, stderr=subprocess.DEVNULL)

    def ours_once() -> Measure:
        for marker in (data / ".state").glob("pack-*"):
            shutil.rmtree(marker) if marker.is_dir() else marker.unlink()
        return measure([bootstrap_cmd("pack", data, src)], cold=False)

    ours = median(runs, ours_once)
    floor = median(runs, lambda: measure([[PY, "-c", FLOOR, str(tree / "train"), cpus]], cwd=ROOT, cold=False))
    val_images = len(read_devkit(src / DEVKIT).val_wnids)
    return {
        "images": images,
        "processes": int(cpus),
        "im2rec_images_per_s": round(images / im2rec.seconds, 1),
        "ours_images_per_s": round((images + val_images) / ours.seconds, 1),
        "floor_images_per_s": round(images / floor.seconds, 1),
        "speedup_vs_im2rec": round(im2rec.seconds / ours.seconds * (images + val_images) / images, 2),
    }


# -- 1b. what each output format costs -----------------------------------------------------


FORMAT_DIRS = {"recordio": "recordio", "webdataset": "webdataset", "tree": "imagenet"}


def _pack_seconds(src: Path, formats: str, runs: int) -> tuple[float, Path]:
    data = WORK / f"formats-{formats.replace(',', '-')}"
    fresh_fetched(data, src)
    subprocess.run(bootstrap_cmd("organise", data, src), check=True, stderr=subprocess.DEVNULL)

    def once() -> Measure:
        for done in [*(data / ".state").glob("pack-*"), data / "webdataset", data / "imagenet"]:
            shutil.rmtree(done, ignore_errors=True) if done.is_dir() else done.unlink(missing_ok=True)
        return measure([bootstrap_cmd("pack", data, src, "--formats", formats)], cold=False)

    return median(runs, once).seconds, data


def bench_formats(src: Path, runs: int) -> dict[str, Any]:
    """Bytes per image of each format (as stored, and as allocated on ext4-like 4 KiB blocks here), and the pack
    time with every format against RecordIO alone, on the same archives."""
    alone, _ = _pack_seconds(src, "recordio", runs)
    every, data = _pack_seconds(src, "recordio,webdataset,tree", runs)
    images = sum(len((data / "recordio" / f"{split}.lst").read_text().splitlines()) for split in ("train", "val"))
    out: dict[str, Any] = {"images": images, "recordio_pack_seconds": round(alone, 2),
                           "every_format_pack_seconds": round(every, 2), "bytes_per_image": {},
                           "allocated_per_image": {}}  # fmt: skip
    for fmt, folder in FORMAT_DIRS.items():
        files = [p for p in (data / folder).rglob("*") if p.is_file() and not p.name.startswith("contact_sheet")]
        out["bytes_per_image"][fmt] = round(sum(p.stat().st_size for p in files) / images)
        out["allocated_per_image"][fmt] = round(sum(p.stat().st_blocks * 512 for p in files) / images)
    return out


# -- 5. reading the records back ---------------------------------------------------------


def bench_read(src: Path) -> dict[str, Any]:
    from bootstrap.gpu.read_bench import read_rate

    data = WORK / f"ours-pack-{src.name}"
    if not (data / "recordio" / "train.rec").exists():
        fresh_fetched(data, src)
        subprocess.run(bootstrap_cmd("pack", data, src), check=True, stderr=subprocess.DEVNULL)
    rec, idx = data / "recordio" / "train.rec", data / "recordio" / "train.idx"
    records = len(idx.read_text().splitlines())
    result: dict[str, Any] = {"records": records, "bytes_per_record": round(rec.stat().st_size / records)}
    if os.geteuid() != 0:
        return {**result, "skipped": "needs root for the loop-mounted filesystem"}
    image, mount = WORK / "read.img", WORK / "read-mnt"
    with open(image, "wb") as f:
        f.truncate(rec.stat().st_size * 2 + (64 << 20))
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    mount.mkdir(exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        shutil.copy(rec, mount / rec.name)
        shutil.copy(idx, mount / idx.name)
        for order in ("sequential", "random"):
            drop_caches()
            rate = read_rate(mount / rec.name, mount / idx.name, order, seconds=60)
            result[order] = {"records_per_s": round(rate.records_per_s), "mib_per_s": round(rate.mib_per_s, 1)}
    finally:
        subprocess.run(["umount", str(mount)], check=True)
        image.unlink()
    return result


# -- 2. end to end -------------------------------------------------------------------------


def by_hand_chain(src: Path, data: Path) -> list[list[str]]:
    """The 2017 recipe as shell commands: untar twice, move val, im2rec list + pack."""
    move_val = (
        "import os,sys\n"
        "d, labels = sys.argv[1], open(sys.argv[2]).read().split()\n"
        "for i, w in enumerate(labels, 1):\n"
        "    os.makedirs(os.path.join(d, w), exist_ok=True)\n"
        "    n = 'ILSVRC2012_val_%08d.JPEG' % i\n"
        "    os.rename(os.path.join(d, n), os.path.join(d, w, n))\n"
    )
    untar_classes = (
        f'cd {data}/train && for f in *.tar; do d="${{f%.tar}}"; mkdir "$d"; tar xf "$f" -C "$d"; rm "$f"; done'
    )
    cpus = str(os.cpu_count())
    return [
        ["bash", "-c", f"mkdir -p {data}/train {data}/val {data}/rec && tar xf {src / TRAIN} -C {data}/train"],
        ["bash", "-c", untar_classes],
        ["tar", "xf", str(src / VAL), "-C", str(data / "val")],
        [PY, "-c", move_val, str(data / "val"), str(data / "val_labels.txt")],
        [PY, "-m", "mxnet.tools.im2rec", "--list", "--recursive", str(data / "rec" / "train"), str(data / "train")],
        [PY, "-m", "mxnet.tools.im2rec", "--list", "--recursive", "--no-shuffle", str(data / "rec" / "val"),
         str(data / "val")],
        [PY, "-m", "mxnet.tools.im2rec", "--resize", "256", "--quality", "90", "--num-thread", cpus,
         str(data / "rec" / "train"), str(data / "train")],
        [PY, "-m", "mxnet.tools.im2rec", "--resize", "256", "--quality", "90", "--num-thread", cpus,
         str(data / "rec" / "val"), str(data / "val")],
    ]  # fmt: skip


def bench_end_to_end(src: Path, runs: int) -> dict[str, Any]:
    def by_hand_once() -> Measure:
        data = WORK / "byhand-e2e"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        (data / "val_labels.txt").write_text("\n".join(read_devkit(src / DEVKIT).val_wnids) + "\n")
        return measure(by_hand_chain(src, data))

    def ours_once() -> Measure:
        data = WORK / "ours-e2e"
        fresh_fetched(data, src)
        return measure([bootstrap_cmd("run", data, src)])

    hand, ours = median(runs, by_hand_once), median(runs, ours_once)
    io_hand, io_ours = hand.read_bytes + hand.written_bytes, ours.read_bytes + ours.written_bytes
    return {
        "archive_bytes": sum((src / n).stat().st_size for n in (TRAIN, VAL, DEVKIT)),
        "train_images": int(json.loads((src / "dataset.json").read_text())["counts"]["train"]),
        "by_hand_seconds": round(hand.seconds, 1),
        "ours_seconds": round(ours.seconds, 1),
        "speedup": round(hand.seconds / ours.seconds, 2),
        "by_hand_io_bytes": io_hand,
        "ours_io_bytes": io_ours,
        "io_ratio": round(io_ours / io_hand, 2) if io_hand else None,
        "cold_cache": os.geteuid() == 0,
    }


# -- 3. download ---------------------------------------------------------------------------


@contextlib.contextmanager
def _http_server(root: Path, rate_mib: float) -> Iterator[str]:
    """The test suite's HTTP server over ``root`` at ``rate_mib`` per connection; yields its base URL."""
    port_file = WORK / "port"
    port_file.unlink(missing_ok=True)
    server = subprocess.Popen([PY, "-m", "tests.fixtures.http_server", str(root), "--rate-mib", str(rate_mib),
                               "--port-file", str(port_file)], cwd=ROOT)  # fmt: skip
    try:
        while not port_file.exists():
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text()}"
    finally:
        server.terminate()
        server.wait()


def bench_download(runs: int, size_mib: int, rate_mib: float) -> dict[str, Any]:
    served = WORK / "served"
    served.mkdir(parents=True, exist_ok=True)
    blob = served / "blob.tar"
    if not blob.exists() or blob.stat().st_size != size_mib << 20:
        blob.write_bytes(os.urandom(size_mib << 20))
    md5 = hashlib.md5(blob.read_bytes()).hexdigest()
    with _http_server(served, rate_mib) as base:
        url = f"{base}/blob.tar"
        out = WORK / "downloads"

        def clean() -> None:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()

        def run(command: list[str]) -> Measure:
            clean()
            return measure([command], cold=False)

        fetch = (
            "import sys; from pathlib import Path; from bootstrap.dataset.archives import ArchiveSpec\n"
            "from bootstrap.fetch.download import FetchOptions, fetch_archive\n"
            "from bootstrap.fetch.sources import HttpSource\n"
            "fetch_archive(HttpSource(sys.argv[1].rsplit('/', 1)[0]), ArchiveSpec('train', 'blob.tar', sys.argv[2],"
            " int(sys.argv[3])), Path(sys.argv[4]), FetchOptions(connections=8))\n"
        )
        curl = median(runs, lambda: run(["curl", "-sf", "-C", "-", "-o", str(out / "blob.tar"), url]))
        ours = median(runs, lambda: run([PY, "-c", fetch, url, md5, str(size_mib << 20), str(out)]))
        aria = median(runs, lambda: run(["aria2c", "-q", "-x8", "-s8", "-k1M", "--file-allocation=none",
                                         "-d", str(out), "-o", "blob.tar", url]))  # fmt: skip
    return {
        "size_mib": size_mib,
        "per_connection_mib_s": rate_mib,
        "curl_seconds": round(curl.seconds, 2),
        "ours_seconds": round(ours.seconds, 2),
        "aria2c_seconds": round(aria.seconds, 2),
        "speedup_vs_curl": round(curl.seconds / ours.seconds, 2),
        "vs_aria2c": round(ours.seconds / aria.seconds, 2),
        "ours_includes_md5": True,
    }


# -- 3b. pack following the download --------------------------------------------------------


def _seconds_to(data: Path, stage: str) -> float:
    """Seconds from the start of the last ``run`` to the end of ``stage``, from the run's status history."""
    from bootstrap.engine.timeline import read_history

    history = read_history(data / ".state" / "status-history.jsonl")
    start = max(h["t"] for h in history if h["stage"] == "run" and h.get("state") == "running")
    return float(max(h["t"] for h in history if h["stage"] == stage and h.get("state") == "done") - start)


def _stage_seconds(data: Path, stage: str) -> float:
    """How long ``stage`` itself ran in the last ``run``."""
    from bootstrap.engine.timeline import read_history

    history = read_history(data / ".state" / "status-history.jsonl")
    began = max(h["t"] for h in history if h["stage"] == stage and h.get("state") == "running")
    return float(max(h["t"] for h in history if h["stage"] == stage and h.get("state") == "done") - began)


FOLLOW_RANGE_MIB = 1
"""The download's range size in the runs that follow it, scaled down with the archive.  On ImageNet's 148 GB train
archive the 8 ranges in flight (64 MiB each) are 0.35% of it: the bytes pack cannot read until the ranges before
them finish, which it waits for at the end for seconds.  On the 0.5 GB archive here the small-file rule would pick
15.5 MiB ranges, 25% of the file, and pack would wait at the end for a quarter of it; 1 MiB ranges (the smallest
allowed) are 1.6% of it, still more than the real share.  The row says what the default ranges give too."""


@contextlib.contextmanager
def _archive_server(src: Path, rate_mib: float) -> Iterator[list[str]]:
    """The archives over HTTP at ``rate_mib`` per connection; yields ``run``'s source flags (8 connections, ranges of
    ``FOLLOW_RANGE_MIB``)."""
    with _http_server(src, rate_mib) as base:
        yield ["--source", base, "--connections", "8", "--chunk-mib", str(FOLLOW_RANGE_MIB)]


def bench_following(src: Path, runs: int, rate_mib: float) -> dict[str, Any]:
    """``run`` to packed RecordIO with pack following the download, against fetch alone, pack alone, and the run
    that fetches first; the archives served over HTTP at ``rate_mib`` per connection, 8 connections."""
    data = WORK / "following"
    with _archive_server(src, rate_mib) as remote:
        # each from its stage's start, as the runs below are (from the run's): no interpreter start-up in any
        def fetch_once() -> float:
            shutil.rmtree(data, ignore_errors=True)
            measure([[*bootstrap_cmd("fetch", data, src), *remote]], cold=False)
            return _stage_seconds(data, "fetch")

        def pack_once() -> float:
            for done in (data / ".state").glob("pack-*"):
                shutil.rmtree(done) if done.is_dir() else done.unlink()
            measure([bootstrap_cmd("organise", data, src), bootstrap_cmd("pack", data, src)], cold=False)
            return _stage_seconds(data, "organise") + _stage_seconds(data, "pack")

        def run_once(follow: bool, *extra: str) -> float:
            shutil.rmtree(data, ignore_errors=True)
            flag = "--follow-download" if follow else "--no-follow-download"
            measure([[*bootstrap_cmd("run", data, src), *remote, flag, *extra]], cold=False)
            return _seconds_to(data, "pack")

        fetch = statistics.median(fetch_once() for _ in range(runs))
        pack = statistics.median(pack_once() for _ in range(runs))
        following = statistics.median(run_once(True) for _ in range(runs))
        sequential = statistics.median(run_once(False) for _ in range(runs))
        # the same with the range size the product picks for a file this small (the last flag given wins)
        default_ranges = statistics.median(run_once(True, "--chunk-mib", "64") for _ in range(runs))
    slowest = max(fetch, pack)
    return {"archive_bytes": sum(p.stat().st_size for p in src.glob("*.tar*")), "per_connection_mib_s": rate_mib,
            "connections": 8, "range_mib": FOLLOW_RANGE_MIB, "fetch_seconds": round(fetch, 2),
            "pack_seconds": round(pack, 2), "following_seconds": round(following, 2),
            "sequential_seconds": round(sequential, 2), "vs_slowest": round(following / slowest, 2),
            "sequential_vs_slowest": round(sequential / slowest, 2),
            "default_ranges_seconds": round(default_ranges, 2),
            "default_ranges_vs_slowest": round(default_ranges / slowest, 2),
            "default_range_mib": round(chunk_size((src / TRAIN).stat().st_size, True, FetchOptions(connections=8))
                                       / (1 << 20), 1)}  # fmt: skip


@contextlib.contextmanager
def _s3_emulator(bucket: str) -> Iterator[None]:
    """moto's server on localhost with ``bucket`` in it, and the environment that points the SDK at it."""
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([str(Path(PY).parent / "moto_server"), "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
            time.sleep(0.05)
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        server.terminate()
        server.wait()


def bench_following_backup(src: Path, runs: int, rate_mib: float) -> dict[str, Any]:
    """``run`` to backed-up data with pack following the download and the backup following pack, against the
    stages one after another; the archives served as in ``bench_following``, S3 emulated by moto on localhost."""
    data, bucket = WORK / "following-backup", "bench-backup"
    with _archive_server(src, rate_mib) as remote, _s3_emulator(bucket):

        def run_once(overlap: bool) -> tuple[float, float]:
            shutil.rmtree(data, ignore_errors=True)
            flags = ["--follow-download", "--backup-while-packing"] if overlap else \
                ["--no-follow-download", "--no-backup-while-packing"]  # fmt: skip
            measure([[*bootstrap_cmd("run", data, src), *remote, "--bucket", bucket, *flags]], cold=False)
            return _seconds_to(data, "backup"), _stage_seconds(data, "backup")

        overlapped = [run_once(True) for _ in range(runs)]
        sequential = [run_once(False) for _ in range(runs)]
    backup_alone = statistics.median(s for _, s in sequential)
    return {"archive_bytes": sum(p.stat().st_size for p in src.glob("*.tar*")), "per_connection_mib_s": rate_mib,
            "connections": 8, "overlapped_seconds": round(statistics.median(t for t, _ in overlapped), 2),
            "sequential_seconds": round(statistics.median(t for t, _ in sequential), 2),
            "backup_alone_seconds": round(backup_alone, 2),
            "backup_stage_after_pack_seconds": round(statistics.median(s for _, s in overlapped), 2)}  # fmt: skip


# -- 4. memory -----------------------------------------------------------------------------


def bench_plan(results: dict[str, Any], bandwidth_mb_s: float = 100.0) -> dict[str, Any]:
    """``scripts.plan``'s headline for ImageNet on the defaults, at the pack rate this benchmark measured: computed
    from stated assumptions (every row's is kept), not measured."""
    pack = results["pack"]
    inputs = plan.PlanInputs(bandwidth_mb_s=bandwidth_mb_s,
                             images_per_vcpu_s=float(pack["ours_images_per_s"]) / float(pack["processes"]))  # fmt: skip
    out: dict[str, Any] = {"bandwidth_mb_s": bandwidth_mb_s, "images_per_vcpu_s": inputs.images_per_vcpu_s}
    prices = load_prices()
    sequential = replace(inputs, follow_download=False, backup_while_packing=False)
    # The hub's shards hold the same JPEGs in other tars: three members a sample (.jpg, .cls, .json), each a 512-byte
    # header and half a block of padding on average, where the class tars had one.  An estimate; the exact bytes are
    # in the table hub-table writes (python -m scripts plan --dataset-table hub-table.json).
    hub_bytes = inputs.archive_bytes + inputs.images * 2 * (512 + 256)
    hub = replace(inputs, archive_bytes=hub_bytes, dataset="timm/imagenet-1k-wds's shards (size estimated)")
    for name, case in (("following", inputs), ("one_after_another", sequential), ("hub", hub)):
        rows = plan.plan(case, prices)
        sums = plan.totals(case, rows, prices)
        out[name] = {"headline": plan.headline(case, rows, sums), "hours": round(sums["hours to dataset"], 2),
                     "one_off_usd": round(sums["one-off"], 2),
                     "assumptions": {r.item: r.assumption for r in rows}}  # fmt: skip
    return out


def bench_memory(sizes: list[int], runs: int) -> dict[str, Any]:
    peaks = {}
    for per_class in sizes:
        src = dataset(f"mem-{per_class}", Spec(classes=10, train_per_class=per_class, val_per_class=5, seed=3))

        def once(src: Path = src) -> Measure:
            data = WORK / "ours-mem"
            shutil.rmtree(data, ignore_errors=True)
            # Small buckets, so every size runs with full buckets: the shuffle's memory bound is then
            # the same, and any growth would come from per-image state.
            return measure([bootstrap_cmd("run", data, src, "--bucket-mib", "2")], cold=False)

        peaks[per_class * 10] = median(runs, once).peak_rss
    return {"train_images_to_peak_rss_bytes": peaks}


# -- report --------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    p, e, d, m = results["pack"], results["end_to_end"], results["download"], results["memory"]
    rss = m["train_images_to_peak_rss_bytes"]
    counts = sorted(rss, key=int)
    mib = 1 << 20
    rows = [
        (f"Pack throughput (resize 256, q90), {_profile(p)}",
         f"{p['ours_images_per_s']} img/s", f"im2rec {p['im2rec_images_per_s']} img/s; floor {p['floor_images_per_s']}",
         f"{p['speedup_vs_im2rec']}x im2rec (target >= 2.0x), {_vs_floor(p)}x the floor (target >= 1.3x)"),
        (f"End to end, archives -> RecordIO ({e.get('train_images', 1000):,} train images)",
         f"{e['ours_seconds']} s, {e['ours_io_bytes'] / mib:.0f} MiB I/O",
         f"by hand {e['by_hand_seconds']} s, {e['by_hand_io_bytes'] / mib:.0f} MiB I/O",
         f"{e['speedup']}x faster, I/O ratio {e['io_ratio']} (targets >= 2x, <= 0.5)"),
        (f"Download {d['size_mib']} MiB at {d['per_connection_mib_s']} MiB/s per connection",
         f"{d['ours_seconds']} s (8 connections, incl. MD5)",
         f"curl -C - {d['curl_seconds']} s; aria2c -x8 {d['aria2c_seconds']} s",
         f"{d['speedup_vs_curl']}x curl (target >= 6x); {d['vs_aria2c']}x aria2c time (target <= 1.1)"),
        ("Peak RSS of the whole run (all processes)",
         ", ".join(f"{rss[c] / mib:.0f} MiB at {int(c):,} images" for c in counts), "",
         f"+{(rss[counts[-1]] - rss[counts[0]]) / mib:.0f} MiB for {int(counts[-1]) // int(counts[0])}x the images "
         "(allocator, not per-image state); target < 1.5 GiB"),
    ]  # fmt: skip
    if "pack_large_tail" in results:
        t = results["pack_large_tail"]
        rows.append((f"Pack throughput, {_profile(t)} (not the headline)", f"{t['ours_images_per_s']} img/s",
                     f"im2rec {t['im2rec_images_per_s']} img/s; floor {t['floor_images_per_s']}",
                     f"{t['speedup_vs_im2rec']}x im2rec, {_vs_floor(t)}x the floor"))  # fmt: skip
    if "sequential" in results.get("read", {}):
        r = results["read"]
        rows.append(("Read the train records back (loop-mounted ext4, cold cache)",
                     f"in file order {r['sequential']['records_per_s']:,} records/s, "
                     f"{r['sequential']['mib_per_s']} MiB/s; at random {r['random']['records_per_s']:,} records/s, "
                     f"{r['random']['mib_per_s']} MiB/s", f"{r['bytes_per_record']:,} bytes per record",
                     "the local disk; on a GPU instance run `python -m bootstrap bench-read`"))  # fmt: skip
    if "quality" in results:
        q = results["quality"]
        yuv = q.get("yuv round trip (not adopted)")
        rows.append((f"Picture quality vs a float area resize ({q['images']} resized images, imagenet profile)",
                     f"PSNR {q['ours']['psnr_db']} dB, SSIM {q['ours']['ssim']}",
                     f"im2rec's recipe {q['im2rec recipe']['psnr_db']} dB, {q['im2rec recipe']['ssim']}"
                     + (f"; YUV round trip {yuv['psnr_db']} dB, {yuv['ssim']}" if yuv else ""),
                     "same quality 90; PSNR all channels, SSIM on luma"))  # fmt: skip
    if "yuv_8/8_ms" in results.get("decode_scales", {}):
        d_ = results["decode_scales"]
        rows.append(("JPEG decode time per scale (500-px images, libturbojpeg)",
                     ", ".join(f"{n}/8 {d_[f'yuv_{n}/8_ms']} ms" for n in range(8, 0, -1) if f"yuv_{n}/8_ms" in d_)
                     + " (to YUV)",
                     f"OpenCV full decode {d_['opencv_bgr_8/8_ms']} ms (to BGR)",
                     "only 8/8, 4/8, 2/8, 1/8 have SIMD inverse DCTs, so the packer uses only those"))  # fmt: skip
    if "least_work_ms" in results.get("least_work", {}):
        rows.append(_least_work_row(results["least_work"], p))
    if "readers" in results:
        r = results["readers"]
        rows.append((f"bootstrap.readers over the packed train records ({r['records']:,}, warm page cache)",
                     f"map-style at random {r['map_style_random_bytes_per_s']:,} records/s as bytes, "
                     f"{r['map_style_random_rgb_per_s']:,} decoded to RGB",
                     f"in file order {r['stream_bytes_per_s']:,} records/s as bytes, {r['stream_rgb_per_s']:,} decoded",
                     "one process; a DataLoader's workers multiply it"))  # fmt: skip
    if "formats" in results:
        f = results["formats"]
        size, held = f["bytes_per_image"], f["allocated_per_image"]
        ratio = (size["recordio"] + size["webdataset"] + held["tree"]) / size["recordio"]
        rows.append((f"Every format from one pass ({f['images']:,} images, imagenet profile): bytes per image",
                     f"pack {f['every_format_pack_seconds']} s; recordio {size['recordio']:,} B, webdataset "
                     f"{size['webdataset']:,} B, tree {size['tree']:,} B ({held['tree']:,} B allocated)",
                     f"RecordIO alone: pack {f['recordio_pack_seconds']} s",
                     f"{f['every_format_pack_seconds'] / f['recordio_pack_seconds']:.2f}x the pack time for "
                     f"{ratio:.1f}x the bytes"))  # fmt: skip
    if "following" in results:
        w = results["following"]
        rows.append((f"Pack following the download, run to packed RecordIO ({w['archive_bytes'] / 1e6:,.0f} MB at "
                     f"{w['connections']} x {w['per_connection_mib_s']:g} MiB/s, {w['range_mib']} MiB ranges: "
                     "in flight, a share of the file like 64 MiB ones of ImageNet's)",
                     f"{w['following_seconds']} s",
                     f"fetch alone {w['fetch_seconds']} s, pack alone {w['pack_seconds']} s; fetch then pack "
                     f"{w['sequential_seconds']} s",
                     f"{w['vs_slowest']}x the slower of the two (target <= 1.25; fetching first: "
                     f"{w['sequential_vs_slowest']}x; in the {w['default_range_mib']:g} MiB ranges picked for a file "
                     f"this small, a quarter of it in flight: {w['default_ranges_vs_slowest']}x)"))  # fmt: skip
    if "following_backup" in results and "following" in results:
        b, w = results["following_backup"], results["following"]
        slowest = max(w["fetch_seconds"], w["pack_seconds"], b["backup_alone_seconds"])
        rows.append((f"Run to backed-up data, backup following pack ({b['archive_bytes'] / 1e6:,.0f} MB at "
                     f"{b['connections']} x {b['per_connection_mib_s']:g} MiB/s; S3 = moto on localhost)",
                     f"{b['overlapped_seconds']} s (backup stage after pack {b['backup_stage_after_pack_seconds']} s)",
                     f"stages one after another {b['sequential_seconds']} s; fetch alone {w['fetch_seconds']} s, pack "
                     f"alone {w['pack_seconds']} s, backup alone {b['backup_alone_seconds']} s",
                     f"{b['overlapped_seconds'] / slowest:.2f}x the slowest of the three; one after another "
                     f"{b['sequential_seconds'] / slowest:.2f}x"))  # fmt: skip
    if "plan" in results:
        h = results["plan"]
        rows.append((f"`scripts plan` headline: ImageNet on the defaults at {h['bandwidth_mb_s']:g} MB/s (computed, "
                     "not measured)", f"{h['following']['hours']} h to the published dataset, "
                     f"${h['following']['one_off_usd']} once",
                     f"the stages one after another {h['one_after_another']['hours']} h",
                     h["following"]["headline"]))  # fmt: skip
        if "hub" in h:
            rows.append((f"`scripts plan` headline: the same from the Hugging Face hub at {h['bandwidth_mb_s']:g} MB/s "
                         "(computed; shard bytes estimated)", f"{h['hub']['hours']} h to the published dataset, "
                         f"${h['hub']['one_off_usd']} once", h["hub"]["assumptions"]["download"],
                         h["hub"]["headline"]))  # fmt: skip
    machine = results["machine"]
    order = (
        "pack",
        "end_to_end",
        "download",
        "memory",
        "pack_large_tail",
        "read",
        "quality",
        "decode_scales",
        "least_work",
        "readers",
        "formats",
        "following",
        "following_backup",
        "plan",
    )
    dates = [results[k].get("measured", results.get("date", "")) for k in order if k in results]
    if "hub" in results.get("plan", {}):  # the plan's second row, the same computation
        dates.append(dates[-1])
    lines = [
        f"Measured on {machine['cpus']} CPUs ({machine['cpu']}), medians of {results['runs']} runs; the pack rows on "
        f"{p['images']:,} train images per profile. The imagenet profile is the headline: ImageNet's size mix and "
        "bytes per pixel (`scripts/synthetic_imagenet.py`, `PROFILES`, says where its numbers come from); large-tail "
        "has 20% of "
        "images at 800 px and more. `make bench` to reproduce.",
        "",
        "| benchmark | ours | reference | result | measured |",
        "|---|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d_} | {date} |" for (a, b, c, d_), date in zip(rows, dates, strict=True)],
    ]
    return "\n".join(lines)


def _least_work_row(w: dict[str, Any], p: dict[str, Any]) -> tuple[str, str, str, str]:
    """What issue 14's targets ask against what the least work per image allows (``bench_least_work``)."""
    fastest = w["fastest"]
    ways = ", ".join(f"{way} for {n}" for way, n in sorted(fastest.items(), key=lambda kv: -kv[1]) if way != "kept")
    ceiling, bare_ceiling = p["processes"] * 1000 / w["least_work_ms"], p["processes"] * 1000 / w["bare_loop_work_ms"]
    return (f"Least work per image with libjpeg-turbo ({w['images']} imagenet-profile images, one thread, best of 5)",
            f"{w['least_work_ms']} ms: the fastest decode scale that keeps the short side, then resize and encode, "
            f"through BGR or YUV ({ways}; {fastest.get('kept', 0)} kept as they are, checked by a 1/8 decode)",
            f"the bare loop's work {w['bare_loop_work_ms']} ms",
            f"the bare loop does at most {w['bare_loop_work_ms'] / w['least_work_ms']:.2f}x this work (target: 1.3x "
            f"its throughput); 2.0x im2rec is {2 * p['im2rec_images_per_s']:.0f} img/s, "
            f"{2 * p['im2rec_images_per_s'] / ceiling:.0%} of the {ceiling:.0f} img/s {p['processes']} processes doing "
            f"nothing but this work would reach; the bare loop reaches {p['floor_images_per_s'] / bare_ceiling:.0%} "
            "of its own")  # fmt: skip


def _profile(result: dict[str, Any]) -> str:
    return f"{result.get('profile', 'large-tail')} profile"


def _vs_floor(result: dict[str, Any]) -> float:
    return round(float(result["ours_images_per_s"]) / float(result["floor_images_per_s"]), 2)


def update_readme(text: str) -> None:
    readme = ROOT / "README.md"
    content = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start in content and end in content:
        head, rest = content.split(start, 1)
        readme.write_text(f"{head}{start}\n{text}\n{end}{rest.split(end, 1)[1]}")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--download-mib", type=int, default=256)
    parser.add_argument("--rate-mib", type=float, default=8.0)
    parser.add_argument("--follow-rate-mib", type=float, default=12.0,
                        help="per-connection rate for the following benchmark (8 x 12 MiB/s: fetch takes about as "
                        "long as pack here)")  # fmt: skip
    names = ("pack", "pack_large_tail", "end_to_end", "download", "memory", "read", "quality", "decode_scales",
             "least_work", "readers", "formats", "following", "following_backup", "plan")  # fmt: skip
    parser.add_argument("--only", choices=names, action="append")
    parser.add_argument("--report", action="store_true", help="only render the table from bench/results.json")
    args = parser.parse_args()
    if args.report:
        text = table(json.loads((ROOT / "bench" / "results.json").read_text()))
        (ROOT / "bench" / "results.md").write_text(text + "\n")
        update_readme(text)
        print(text)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    src = dataset("imagenet", Spec(classes=args.classes, train_per_class=args.per_class, val_per_class=5,
                                   profile="imagenet", awkward=False))  # fmt: skip
    tail = dataset("large-tail", Spec(classes=args.classes, train_per_class=args.per_class, val_per_class=5,
                                      profile="large-tail", awkward=False))  # fmt: skip
    results_path = ROOT / "bench" / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() else {}
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "pack": lambda: {**bench_pack(src, args.runs), "profile": "imagenet"},
        "pack_large_tail": lambda: {**bench_pack(tail, args.runs), "profile": "large-tail"},
        "end_to_end": lambda: bench_end_to_end(src, args.runs),
        "download": lambda: bench_download(args.runs, args.download_mib, args.rate_mib),
        "memory": lambda: bench_memory([100, 400, 1600], args.runs),
        "read": lambda: bench_read(src),
        "quality": lambda: bench_quality(src),
        "decode_scales": lambda: bench_decode_scales(src),
        "least_work": lambda: bench_least_work(src),
        "readers": lambda: bench_readers(WORK / f"ours-pack-{src.name}" / "recordio"),
        "formats": lambda: bench_formats(src, args.runs),
        "following": lambda: bench_following(src, args.runs, args.follow_rate_mib),
        "following_backup": lambda: bench_following_backup(src, args.runs, args.follow_rate_mib),
        "plan": lambda: bench_plan(results),
    }
    for name, step in steps.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        result = step()
        if "skipped" in result and name in results:  # a machine that cannot run it keeps the last measurement
            print(f"skipped ({result['skipped']}); keeping the measurement of {results[name].get('measured')}")
            continue
        results[name] = {**result, "measured": time.strftime("%Y-%m-%d")}
        print(json.dumps(results[name], indent=2), flush=True)
    machine = {"cpus": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version()}
    results.update(runs=args.runs, machine=machine)
    results_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    if all(k in results for k in steps):
        text = table(results)
        (ROOT / "bench" / "results.md").write_text(text + "\n")
        update_readme(text)
        print(text)


if __name__ == "__main__":
    main()
