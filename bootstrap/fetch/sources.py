"""Where archives come from: an https base URL, an ``s3://`` prefix, or a local directory.

Every source answers two questions: how big is a file and does it serve byte
ranges (``stat``), and what are the bytes in ``[start, end)`` (``read``).
Fetch builds parallel, resumable downloads on top of that and nothing else.

Credentials for an https source come from the environment or from a Secrets
Manager secret, never from arguments, and are never logged.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import urllib3

from bootstrap.common.errors import ConfigError, FetchError

READ_BLOCK = 1 << 20

ENV_USER = "DATASET_SOURCE_USERNAME"
ENV_PASSWORD = "DATASET_SOURCE_PASSWORD"  # image-net.org calls this the access key
ENV_TOKEN = "DATASET_SOURCE_TOKEN"
ENV_HF_TOKEN = "HF_TOKEN"  # a hub source's token, as every Hugging Face tool reads it


class TransientError(Exception):
    """A failure worth retrying: a dropped connection, a 5xx, a throttle."""


@dataclass(frozen=True)
class RemoteFile:
    size: int
    ranges: bool


class Source(Protocol):
    def describe(self) -> str: ...

    def stat(self, name: str) -> RemoteFile: ...

    def read(self, name: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of ``name``; may raise TransientError part-way."""
        ...


# -- credentials -------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    token: str | None = None

    def header(self) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.username is not None:
            raw = f"{self.username}:{self.password or ''}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}

    def __repr__(self) -> str:  # never print secrets, even by accident
        kind = "token" if self.token else "basic" if self.username else "none"
        return f"Credentials(<{kind}>)"


def credentials_from_mapping(values: dict[str, Any]) -> Credentials:
    """Accepts ``{"token"}`` or ``{"username", "password" | "access_key"}``."""
    token = values.get("token") or None  # empty strings: the placeholder the CDK app creates the secret with
    user = values.get("username") or None
    password = values.get("password", values.get("access_key")) or None
    return Credentials(user, password, token)


def resolve_credentials(
    secret_name: str | None,
    env: dict[str, str] | None = None,
    fetch_secret: Callable[[str], str] | None = None,
    *,
    hub: bool = False,
) -> Credentials:
    """Credentials from the environment, else from the named secret, else none.  For a hub source, ``HF_TOKEN``
    counts as the environment's token too (the name every Hugging Face tool reads)."""
    env = dict(os.environ) if env is None else env
    if hub and env.get(ENV_HF_TOKEN) and not env.get(ENV_TOKEN):
        return Credentials(token=env[ENV_HF_TOKEN])
    if env.get(ENV_TOKEN) or env.get(ENV_USER):
        return Credentials(env.get(ENV_USER), env.get(ENV_PASSWORD), env.get(ENV_TOKEN))
    if not secret_name:
        return Credentials()
    if fetch_secret is None:
        raise ConfigError(f"secret {secret_name}: no Secrets Manager reader was given (it needs the region)")
    raw = fetch_secret(secret_name)
    try:
        values = json.loads(raw)
    except json.JSONDecodeError:
        raise ConfigError(
            f"secret {secret_name} must hold JSON such as "
            '{"username": "...", "access_key": "..."} or {"token": "..."}'
        ) from None
    return credentials_from_mapping(values)


# -- https -----------------------------------------------------------------------


_AUTH_HINT = {
    401: "the server wants credentials: set {user}/{pw} (or {tok}), or store them in the source secret",
    403: "the server refused these credentials: check the username/access key or token, "
    "and that the account may download this dataset",
    404: "no such file at the source: check the source URL and the archive names in the dataset table",
}


def discard(resp: urllib3.BaseHTTPResponse) -> None:
    """Give up a response whose body we will not read: never pool a connection with bytes left in it."""
    resp.close()
    resp.release_conn()


class HttpSource:
    def __init__(
        self,
        base_url: str,
        credentials: Credentials | None = None,
        *,
        timeout: float = 60.0,
        pool: urllib3.PoolManager | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self._headers = (credentials or Credentials()).header()
        self._timeout = urllib3.Timeout(connect=min(timeout, 20.0), read=timeout)
        self._pool = pool or urllib3.PoolManager(maxsize=32, retries=False)

    def describe(self) -> str:
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"

    def _url(self, name: str) -> str:
        return self.base_url + quote(name)

    def _request(self, name: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        try:
            resp = self._pool.request(
                "GET",
                self._url(name),
                headers={**self._headers, **headers},
                preload_content=False,
                timeout=self._timeout,
                redirect=True,
            )
        except urllib3.exceptions.HTTPError as e:
            raise TransientError(f"{name}: {type(e).__name__}: {e}") from e
        return self._check(name, resp)

    def _hint(self, status: int) -> str:
        """What to do about a 401, 403 or 404."""
        return _AUTH_HINT[status].format(user=ENV_USER, pw=ENV_PASSWORD, tok=ENV_TOKEN)

    def _check(self, name: str, resp: urllib3.BaseHTTPResponse) -> urllib3.BaseHTTPResponse:
        """``resp`` if it carries the file's bytes; otherwise a ``FetchError`` that says what to do, or a
        ``TransientError`` (retried) for a throttle or a server error."""
        if resp.status in (401, 403, 404):
            discard(resp)
            raise FetchError(f"{self.describe()}{name}: HTTP {resp.status}; {self._hint(resp.status)}")
        if resp.status == 429 or resp.status >= 500:
            discard(resp)
            raise TransientError(f"{name}: HTTP {resp.status}")
        if resp.status not in (200, 206):
            discard(resp)
            raise FetchError(f"{self.describe()}{name}: unexpected HTTP {resp.status}")
        return resp

    def stat(self, name: str) -> RemoteFile:
        resp = self._request(name, {"Range": "bytes=0-0"})
        try:
            if resp.status == 206:
                content_range = resp.headers.get("Content-Range", "")
                total = content_range.rpartition("/")[2]
                if total.isdigit():
                    return RemoteFile(int(total), ranges=True)
            length = resp.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise FetchError(f"{self.describe()}{name}: the server gives no size (no Content-Length)")
            return RemoteFile(int(length), ranges=False)
        finally:
            discard(resp)

    def read(self, name: str, start: int, end: int) -> Iterator[bytes]:
        headers = {"Range": f"bytes={start}-{end - 1}"} if start or end else {}
        resp = self._request(name, headers)
        remaining = end - start
        try:
            if start and resp.status != 206:
                raise TransientError(f"{name}: asked for a range, got HTTP {resp.status}")
            # read1: whatever has arrived, so a connection that stalls or drops loses none of what it delivered
            for block in read_exactly(resp.read1, remaining, name, (urllib3.exceptions.HTTPError, OSError)):
                remaining -= len(block)
                yield block
        finally:
            if remaining:
                discard(resp)
            else:
                resp.release_conn()


def read_exactly(
    read: Callable[[int], bytes], size: int, name: str, lost: tuple[type[BaseException], ...]
) -> Iterator[bytes]:
    """``size`` bytes from ``read`` in blocks of up to ``READ_BLOCK``; a dropped or short stream is a
    ``TransientError`` (retried).  ``read`` may return less than asked (``read1``): pieces are gathered into whole
    blocks, and what was gathered is yielded before the error, so a stall or a drop loses nothing delivered."""
    remaining, block = size, bytearray()
    while remaining > 0:
        try:
            piece = read(min(READ_BLOCK - len(block), remaining))
        except lost as e:
            error: TransientError = TransientError(f"{name}: connection lost: {e}")
            error.__cause__ = e
        else:
            if piece:
                block += piece
                remaining -= len(piece)
                if len(block) >= READ_BLOCK or not remaining:
                    yield bytes(block)
                    block.clear()
                continue
            error = TransientError(f"{name}: connection closed {remaining} bytes early")
        if block:
            yield bytes(block)
        raise error


# -- s3 --------------------------------------------------------------------------


class S3Source:
    def __init__(self, url: str, client: Any) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"source {url!r} is not an s3://bucket/prefix URL")
        self.bucket, self.prefix = parts.netloc, parts.path.lstrip("/")
        if self.prefix and not self.prefix.endswith("/"):
            self.prefix += "/"
        self._s3 = client

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _call(self, name: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        from bootstrap.common.aws import aws_error, error_code

        try:
            return fn(Bucket=self.bucket, Key=self.prefix + name, **kwargs)
        except ClientError as e:
            code = error_code(e)
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FetchError(f"{self.describe()}{name} does not exist: check the source prefix") from None
            if code in ("AccessDenied", "403", "Forbidden"):
                raise FetchError(
                    f"{self.describe()}{name}: access denied; the instance role needs s3:GetObject on it"
                ) from None
            if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
                raise TransientError(f"{name}: {code}") from e
            raise FetchError(str(aws_error(f"{self.describe()}{name}", e))) from None
        except BotoCoreError as e:
            raise TransientError(f"{name}: {e}") from e

    def stat(self, name: str) -> RemoteFile:
        head = self._call(name, self._s3.head_object)
        return RemoteFile(int(head["ContentLength"]), ranges=True)

    def read(self, name: str, start: int, end: int) -> Iterator[bytes]:
        obj = self._call(name, self._s3.get_object, Range=f"bytes={start}-{end - 1}")
        body = obj["Body"]
        try:
            # botocore surfaces socket errors in many types
            yield from read_exactly(body.read, end - start, name, (Exception,))
        finally:
            body.close()


# -- local directory -------------------------------------------------------------


class LocalSource:
    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    def path(self, name: str) -> Path:
        return self.root / name

    def stat(self, name: str) -> RemoteFile:
        try:
            return RemoteFile(self.path(name).stat().st_size, ranges=True)
        except FileNotFoundError:
            raise FetchError(f"{self.path(name)} does not exist: put the archive there or fix the source") from None

    def read(self, name: str, start: int, end: int) -> Iterator[bytes]:
        with open(self.path(name), "rb") as f:
            f.seek(start)
            remaining = end - start
            while remaining > 0:
                block = f.read(min(READ_BLOCK, remaining))
                if not block:
                    raise FetchError(f"{self.path(name)} shrank while it was being read")
                remaining -= len(block)
                yield block


def open_source(spec: str, credentials: Credentials | None = None, *, s3: Callable[[], Any] | None = None,
                stall_seconds: float = 60.0, revision: str | None = None) -> Source:  # fmt: skip
    """A source from its spelling: ``https://…``, ``http://…``, ``s3://…``, ``hf://owner/name`` (at the pinned
    ``revision``; the hub's address from ``HF_ENDPOINT``) or a directory; ``s3`` makes its client.
    An HTTP connection that sends nothing for ``stall_seconds`` is a transient error (the range is fetched again)."""
    scheme = urlsplit(spec).scheme
    if scheme == "hf":
        from bootstrap.dataset.archives import hub_repo
        from bootstrap.fetch.hub import ENV_ENDPOINT, HUB_ENDPOINT, HubSource

        repo = hub_repo(spec)
        if revision is None:
            raise ConfigError(f"source {spec!r} needs its pinned shard table: run `python -m scripts hub-table "
                              f"{spec}` and set dataset_table to the file it writes")  # fmt: skip
        return HubSource(repo, revision, credentials, endpoint=os.environ.get(ENV_ENDPOINT, HUB_ENDPOINT),
                         timeout=stall_seconds)  # fmt: skip
    if scheme in ("http", "https"):
        return HttpSource(spec, credentials, timeout=stall_seconds)
    if scheme == "s3":
        if s3 is None:
            raise ConfigError(f"source {spec!r}: an s3:// source needs an S3 client (with the region)")
        return S3Source(spec, s3())
    if scheme in ("", "file"):
        root = Path(urlsplit(spec).path if scheme == "file" else spec)
        if not root.is_dir():
            raise ConfigError(f"source directory {root} does not exist")
        return LocalSource(root)
    raise ConfigError(f"source {spec!r}: use an https:// URL, an s3:// prefix, hf://owner/name or a local directory")
