"""Back the data volume up to S3: parallel multipart, incremental, resumable, verifiable.

- Each file goes up through boto3's transfer manager with S3 validating a
  SHA-256 of every part in transit, server-side encryption, and a storage
  class chosen by size (the big archives can go to a cheaper class).
- While a file is read for upload we hash the exact bytes sent: the file's
  SHA-256 and the ETag S3 will report (MD5, or MD5 of part MD5s + "-N" for
  multipart).  After the upload the ETag S3 reports must match ours.
- A journal (one fsynced JSON line per finished file) lets a run killed at
  any point skip what is already up.  A file is skipped when its size and
  mtime match the journal and S3 lists the object with the journalled size
  and ETag, so this works for multipart objects too.
- ``manifest.json`` (path, size, sha256, etag per file) is written last;
  ``verify`` compares it with what S3 holds and reports every difference.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from bootstrap.common.aws import aws_error, error_code
from bootstrap.common.errors import BootstrapError
from bootstrap.common.progress import Progress, StatusFile, human_bytes
from bootstrap.common.state import atomic_write_bytes
from bootstrap.layout import MANIFEST, DataLayout, backed_up
from bootstrap.settings import default

log = logging.getLogger(__name__)
MIN_PART = 16 << 20
MAX_PARTS = 9000  # S3 allows 10,000; keep headroom


class BackupError(BootstrapError):
    """The backup could not be made or does not match S3."""


@dataclass(frozen=True)
class BackupOptions:
    bucket: str
    prefix: str = default("prefix")
    storage_class: str = default("storage_class")
    large_storage_class: str = default("large_storage_class")
    large_bytes: int = 1 << 30
    sse: str = default("sse")
    kms_key_id: str | None = default("kms_key_id")
    concurrency: int = 8

    def key(self, relpath: str) -> str:
        return f"{self.prefix.strip('/')}/{relpath}" if self.prefix.strip("/") else relpath


@dataclass(frozen=True)
class LocalFile:
    relpath: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Uploaded:
    relpath: str
    size: int
    mtime_ns: int
    sha256: str
    etag: str


# -- pure planning -------------------------------------------------------------------


def part_size(size: int) -> int:
    """The multipart part size for a file: 16 MiB, larger when the file needs more than 9000 parts."""
    return max(MIN_PART, -(-size // MAX_PARTS))


def to_upload(files: list[LocalFile], journal: dict[str, Uploaded], remote: dict[str, tuple[int, str]],
              opts: BackupOptions) -> list[LocalFile]:  # fmt: skip
    """Files whose journalled upload is missing, stale, or no longer what S3 holds."""
    pending = []
    for f in files:
        done = journal.get(f.relpath)
        listed = remote.get(opts.key(f.relpath))
        if done and (done.size, done.mtime_ns) == (f.size, f.mtime_ns) and listed == (done.size, done.etag):
            continue
        pending.append(f)
    return pending


# -- I/O ------------------------------------------------------------------------------


def scan(data_dir: Path) -> list[LocalFile]:
    files = []
    for path in sorted(data_dir.rglob("*")):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(data_dir).as_posix()
            if backed_up(rel):
                files.append(local_file(data_dir, rel))
    return files


def local_file(data_dir: Path, relpath: str) -> LocalFile:
    st = (data_dir / relpath).stat()
    return LocalFile(relpath, st.st_size, st.st_mtime_ns)


class _HashingReader:
    """A file reader that hashes what is read: SHA-256 of the file and the multipart ETag.

    For a multipart upload s3transfer reads a seekable stream part by part, in
    order, in one thread (``UploadSeekableInputManager``); a read out of order
    would make the hashes wrong, so it is an error rather than a silent
    mismatch.
    """

    def __init__(self, f: IO[bytes], part: int) -> None:
        self._f, self._part = f, part
        self._sha = hashlib.sha256()
        self._part_md5 = hashlib.md5(usedforsecurity=False)
        self._part_len = 0
        self._md5s: list[bytes] = []
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        if self._f.tell() != self._pos:
            raise BackupError("internal: upload read the file out of order; hashes would be wrong")
        data = self._f.read(n)
        self._pos += len(data)
        self._sha.update(data)
        view = memoryview(data)
        while view:
            take = min(len(view), self._part - self._part_len)
            self._part_md5.update(view[:take])
            self._part_len += take
            view = view[take:]
            if self._part_len == self._part:
                self._md5s.append(self._part_md5.digest())
                self._part_md5, self._part_len = hashlib.md5(usedforsecurity=False), 0
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)  # the size probe; read() checks that reading stays in order

    def tell(self) -> int:
        return self._f.tell()

    def seekable(self) -> bool:
        return True

    def digests(self) -> tuple[str, str]:
        """SHA-256 of the file and its multipart ETag."""
        if self._part_len:
            self._md5s.append(self._part_md5.digest())
        combined = hashlib.md5(b"".join(self._md5s), usedforsecurity=False).hexdigest()
        return self._sha.hexdigest(), f"{combined}-{len(self._md5s)}"


def _translate(e: Exception, opts: BackupOptions, what: str) -> BackupError:
    code = error_code(e)
    if code == "NoSuchBucket":
        return BackupError(
            f"bucket {opts.bucket} does not exist: check the 'bucket' setting (or deploy the storage stack)"
        )
    if code in ("AccessDenied", "403", "Forbidden"):
        return BackupError(
            f"{what}: access denied on s3://{opts.bucket}/{opts.key('')}: the instance role needs s3:PutObject, "
            "s3:ListBucket and s3:AbortMultipartUpload there (and kms:GenerateDataKey if the bucket uses KMS)"
        )
    return BackupError(str(aws_error(what, e)))


class Backup:
    def __init__(self, data_dir: Path, s3: Any, opts: BackupOptions, status: StatusFile | None = None) -> None:
        self.data_dir, self.s3, self.opts, self.status = data_dir, s3, opts, status
        self.journal_path = DataLayout(data_dir).backup_journal
        self._journal_lock = threading.Lock()

    def _journal(self) -> dict[str, Uploaded]:
        entries: dict[str, Uploaded] = {}
        if self.journal_path.exists():
            for line in self.journal_path.read_text().splitlines():
                try:
                    entry = Uploaded(**json.loads(line))
                except (ValueError, TypeError):
                    continue  # a line cut short by a crash: that file is simply sent again
                entries[entry.relpath] = entry
        return entries

    def _record(self, entry: Uploaded) -> None:
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        with self._journal_lock, open(self.journal_path, "a") as f:
            f.write(json.dumps(asdict(entry)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _upload(self, f: LocalFile, progress: Progress, opener: Callable[[], IO[bytes]] | None = None) -> Uploaded:
        """``opener``: read the file through it (one still being written) instead of from the disk as it is."""
        from boto3.s3.transfer import TransferConfig

        part = part_size(f.size)
        config = TransferConfig(
            multipart_threshold=part, multipart_chunksize=part, max_concurrency=self.opts.concurrency
        )
        extra: dict[str, Any] = {
            "ServerSideEncryption": self.opts.sse,
            "StorageClass": self.opts.large_storage_class
            if f.size >= self.opts.large_bytes
            else self.opts.storage_class,
            "ChecksumAlgorithm": "SHA256",
        }
        if self.opts.kms_key_id:
            extra["SSEKMSKeyId"] = self.opts.kms_key_id
        key = self.opts.key(f.relpath)
        with opener() if opener else open(self.data_dir / f.relpath, "rb") as raw:
            body: IO[bytes] | _HashingReader
            if f.size < part:  # one PUT; botocore may read the body twice, so hand it a buffer
                data = raw.read()
                body = io.BytesIO(data)
                digests = hashlib.sha256(data).hexdigest(), hashlib.md5(data, usedforsecurity=False).hexdigest()
            else:
                body = _HashingReader(raw, part)
            try:
                self.s3.upload_fileobj(body, self.opts.bucket, key, ExtraArgs=extra, Config=config,
                                       Callback=progress.advance)  # fmt: skip
                head = self.s3.head_object(Bucket=self.opts.bucket, Key=key)
            except Exception as e:
                raise _translate(e, self.opts, f"uploading {f.relpath}") from None
        if isinstance(body, _HashingReader):
            digests = body.digests()
        if opener is not None:  # all read, so written in full: its size and mtime as they stay
            f = local_file(self.data_dir, f.relpath)
        sha256, etag = digests
        s3_etag = head["ETag"].strip('"')
        # With SSE-KMS the ETag is not an MD5, so only the size can be compared.
        if head["ContentLength"] != f.size or (self.opts.sse != "aws:kms" and s3_etag != etag):
            raise BackupError(f"{f.relpath}: S3 holds {head['ContentLength']} bytes / ETag {s3_etag}, "
                              f"expected {f.size} / {etag}; run backup again")  # fmt: skip
        entry = Uploaded(f.relpath, f.size, f.mtime_ns, sha256, s3_etag)
        self._record(entry)
        return entry

    def send(self, files: list[LocalFile], remote: dict[str, tuple[int, str]] | None = None,
             stage: str = "backup") -> tuple[dict[str, Uploaded], int]:  # fmt: skip
        """Upload those of ``files`` that S3 does not hold as they are now, each journalled once it is up.

        ``remote``: the listing to compare with (default: list the prefix now).  Returns the journal after, and how
        many files were sent.
        """
        journal = self._journal()
        pending = to_upload(files, journal, self.remote() if remote is None else remote, self.opts)
        total = sum(f.size for f in pending)
        log.info("%s: %d files, %d to send (%s) to s3://%s/%s", stage, len(files), len(pending), human_bytes(total),
                 self.opts.bucket, self.opts.key(""))  # fmt: skip
        progress = Progress(stage, total, "B", status=self.status)
        # Big files already use every connection; small ones go several at a time.
        with ThreadPoolExecutor(max_workers=4) as pool:
            for entry in pool.map(lambda f: self._upload(f, progress), pending):
                journal[entry.relpath] = entry
        progress.finish()
        return journal, len(pending)

    def send_growing(self, relpath: str, size: int, opener: Callable[[], IO[bytes]], stage: str) -> Uploaded:
        """Upload ``relpath`` while it is still being written, in parts as its bytes arrive.

        ``opener`` gives a reader that waits for the bytes, and for the file's verification before its last one,
        so S3 completes the object only once the file is final; a reader that fails aborts the upload.
        """
        log.info("%s: %s (%s) goes up as it downloads", stage, relpath, human_bytes(size))
        progress = Progress(f"{stage}: {relpath}", size, "B", status=self.status)
        entry = self._upload(LocalFile(relpath, size, 0), progress, opener)
        progress.finish()
        return entry

    def run(self) -> dict[str, Any]:
        files = scan(self.data_dir)
        journal, sent = self.send(files)
        manifest = {
            "files": [asdict(journal[f.relpath]) for f in files],
            "bucket": self.opts.bucket,
            "prefix": self.opts.key(""),
            "total_bytes": sum(f.size for f in files),
        }
        body = json.dumps(manifest, indent=1, sort_keys=True).encode()
        try:
            self.s3.put_object(Bucket=self.opts.bucket, Key=self.opts.key(MANIFEST), Body=body,
                               ServerSideEncryption=self.opts.sse, ChecksumAlgorithm="SHA256")  # fmt: skip
        except Exception as e:
            raise _translate(e, self.opts, "writing the manifest") from None
        atomic_write_bytes(DataLayout(self.data_dir).local_manifest, body)
        manifest["sha256"] = hashlib.sha256(body).hexdigest()
        manifest["sent"] = sent
        return manifest

    def remote(self) -> dict[str, tuple[int, str]]:
        return list_remote(self.s3, self.opts)

    def verify(self) -> list[str]:
        return verify_backup(self.s3, self.opts)


def list_remote(s3: Any, opts: BackupOptions) -> dict[str, tuple[int, str]]:
    """Every object under the prefix: key -> (size, ETag without quotes)."""
    found: dict[str, tuple[int, str]] = {}
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=opts.bucket, Prefix=opts.key("")):
            for obj in page.get("Contents", []):
                found[obj["Key"]] = (obj["Size"], obj["ETag"].strip('"'))
    except Exception as e:
        raise _translate(e, opts, "listing the backup") from None
    return found


def verify_backup(s3: Any, opts: BackupOptions) -> list[str]:
    """Differences between the manifest in S3 and the objects in S3; empty when they agree."""
    try:
        body = s3.get_object(Bucket=opts.bucket, Key=opts.key(MANIFEST))["Body"].read()
    except Exception as e:
        raise _translate(e, opts, "reading the manifest (has backup run?)") from None
    remote = list_remote(s3, opts)
    problems = []
    for entry in json.loads(body)["files"]:
        key = opts.key(entry["relpath"])
        if key not in remote:
            problems.append(f"{key}: missing from S3")
        elif remote[key] != (entry["size"], entry["etag"]):
            size, etag = remote[key]
            problems.append(
                f"{key}: S3 has {size} bytes / ETag {etag}, manifest says {entry['size']} / {entry['etag']}"
            )
    return problems
