"""The Hugging Face hub as a source: ``hf://owner/name``, e.g. ``hf://timm/imagenet-1k-wds`` (gated).

Two things are read from the hub:

- The shard table, once, on the operator's machine (``python -m scripts hub-table``): the commit a revision points
  at (``/api/datasets/<repo>/revision/<rev>``), then every file at that commit (``/api/datasets/<repo>/tree/<sha>``,
  paginated by ``Link: <…>; rel="next"``), whose LFS metadata gives each shard's size and SHA-256.  The table pins
  the commit, so what the run downloads cannot change under it.
- The shards, on the download instance: ``/datasets/<repo>/resolve/<sha>/<file>`` answers the token with a
  redirect to a signed, expiring URL on another host (the CDN).  The signed URL is kept per file and asked for
  with byte ranges and no Authorization header (the CDN refuses a second credential, and a token must never leave
  the hub); when the CDN refuses it (expired), the hub is asked for a new one and the range is tried again.

The token comes from ``HF_TOKEN`` or from the source secret's ``{"token": …}`` and is never logged.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import urllib3

from bootstrap.common.errors import FetchError
from bootstrap.dataset.archives import HUB_SCHEME
from bootstrap.fetch.sources import ENV_HF_TOKEN, Credentials, HttpSource, TransientError, discard

HUB_ENDPOINT = "https://huggingface.co"
ENV_ENDPOINT = "HF_ENDPOINT"
"""The hub's address, as huggingface_hub spells it (a mirror, or the tests' stand-in)."""
_SHARD = re.compile(r"^[^/]*-(train|validation)-(\d+)\.tar$")
_SPLIT = {"train": "train", "validation": "val"}
_REDIRECTS = (301, 302, 303, 307, 308)
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


def _hints(repo: str, status: int) -> str:
    page = f"https://huggingface.co/datasets/{repo}"
    return {
        401: f'the hub wants a token: set {ENV_HF_TOKEN} or store {{"token": "hf_…"}} in the source secret',
        403: f"the hub refused this token: accept the dataset's terms at {page} with the token's account, "
        "and give the token read access to gated repositories",
        404: f"the hub has no such file or revision in {repo}: check the repository and the shard table",
    }[status]


class HubSource(HttpSource):
    """Shards of one hub dataset at one commit, through the hub's signed redirects."""

    def __init__(self, repo: str, revision: str, credentials: Credentials | None = None, *,
                 endpoint: str = HUB_ENDPOINT, timeout: float = 60.0,
                 pool: urllib3.PoolManager | None = None) -> None:  # fmt: skip
        super().__init__(f"{endpoint.rstrip('/')}/datasets/{repo}/resolve/{revision}/", credentials,
                         timeout=timeout, pool=pool)  # fmt: skip
        self.repo, self.revision = repo, revision
        self._signed: dict[str, str] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"{HUB_SCHEME}{self.repo}@{self.revision[:12]}/"

    def _resolve(self, name: str) -> str:
        """The signed URL the hub redirects ``name`` to; the hub's own URL if it serves the file itself.

        Redirects on the hub's own host (a renamed repository) are followed with the token; the first one to
        another host is the signed URL, which is kept and never sent the token."""
        with self._lock:
            if name in self._signed:
                return self._signed[name]
        url = self._url(name)
        for _ in range(5):
            try:
                resp = self._pool.request("GET", url, headers={**self._headers, "Range": "bytes=0-0"},
                                          preload_content=False, timeout=self._timeout, redirect=False)  # fmt: skip
            except urllib3.exceptions.HTTPError as e:
                raise TransientError(f"{name}: {type(e).__name__}: {e}") from e
            discard(resp)
            location = resp.headers.get("Location")
            if resp.status not in _REDIRECTS or not location:
                break
            url = urljoin(url, location)
            if not self._on_hub(url):
                break
        if resp.status not in _REDIRECTS or self._on_hub(url):
            self._check(name, resp)  # raises unless the hub serves the file itself (a small one), with the token
        with self._lock:
            self._signed[name] = url
        return url

    def _hint(self, status: int) -> str:
        return _hints(self.repo, status)

    def _on_hub(self, url: str) -> bool:
        """``url`` is on the hub's own host, where the token may go."""
        return urlsplit(url).netloc == urlsplit(self.base_url).netloc

    def _request(self, name: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        signed = self._resolve(name)
        on_hub = self._on_hub(signed)
        try:  # the CDN may redirect again; no token goes with it either way
            resp = self._pool.request("GET", signed, headers={**(self._headers if on_hub else {}), **headers},
                                      preload_content=False, timeout=self._timeout, redirect=not on_hub)  # fmt: skip
        except urllib3.exceptions.HTTPError as e:
            raise TransientError(f"{name}: {type(e).__name__}: {e}") from e
        if resp.status in (400, 401, 403) and not on_hub:
            discard(resp)
            with self._lock:
                self._signed.pop(name, None)
            raise TransientError(f"{name}: the signed download URL was refused (HTTP {resp.status}, most likely "
                                 "expired); asking the hub for a new one")  # fmt: skip
        return self._check(name, resp)


# -- the shard table ---------------------------------------------------------------------------------------------


def _get_json(pool: urllib3.PoolManager, url: str, credentials: Credentials, repo: str) -> tuple[Any, str | None]:
    """The JSON at ``url`` and the next page's URL, if any."""
    try:
        resp = pool.request("GET", url, headers=credentials.header(), timeout=60.0, redirect=True)
    except urllib3.exceptions.HTTPError as e:
        raise FetchError(f"{url}: {type(e).__name__}: {e}; check the network and {ENV_ENDPOINT}") from None
    if resp.status in (401, 403, 404):
        raise FetchError(f"{url}: HTTP {resp.status}; {_hints(repo, resp.status)}")
    if resp.status != 200:
        raise FetchError(f"{url}: HTTP {resp.status} from the hub; try again later")
    link = _NEXT.search(resp.headers.get("Link", ""))
    try:
        return json.loads(resp.data), urljoin(url, link.group(1)) if link else None
    except json.JSONDecodeError:
        raise FetchError(f"{url}: the hub's answer is not JSON") from None


def list_files(pool: urllib3.PoolManager, endpoint: str, repo: str, revision: str,
               credentials: Credentials) -> tuple[str, list[dict[str, Any]]]:  # fmt: skip
    """The commit ``revision`` points at, and every file in the repository at that commit (all pages)."""
    base = f"{endpoint.rstrip('/')}/api/datasets/{repo}"
    info, _ = _get_json(pool, f"{base}/revision/{quote(revision, safe='')}", credentials, repo)
    sha = info.get("sha") if isinstance(info, dict) else None
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{40}", sha):
        raise FetchError(f"{base}: the hub gave no commit for revision {revision!r}")
    files: list[dict[str, Any]] = []
    url: str | None = f"{base}/tree/{sha}?recursive=true"
    while url is not None:
        page, url = _get_json(pool, url, credentials, repo)
        files += [entry for entry in page if isinstance(entry, dict) and entry.get("type") == "file"]
    return sha, files


def shard_table(repo: str, sha: str, files: list[dict[str, Any]], info: dict[str, Any] | None) -> dict[str, Any]:
    """The dataset table (``bootstrap.dataset.archives``, hub layout) for the shards among ``files``.

    Shards are the ``*-train-NNNN.tar`` and ``*-validation-NNNN.tar`` files, in number order, with no gap; each
    needs its LFS SHA-256.  ``info`` is the repository's ``_info.json`` (timm's), whose sample counts the pack
    checks; without it the counts are left open."""
    found: dict[str, dict[int, dict[str, Any]]] = {"train": {}, "val": {}}
    for entry in files:
        match = _SHARD.match(str(entry.get("path", "")))
        if not match:
            continue
        lfs = entry.get("lfs") or {}
        sha256, size = lfs.get("oid") or lfs.get("sha256"), lfs.get("size", entry.get("size"))
        if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise FetchError(f"{repo}: the hub gives no SHA-256 for {entry['path']}, so it cannot be pinned")
        found[_SPLIT[match.group(1)]][int(match.group(2))] = {"name": entry["path"], "size": size, "sha256": sha256}
    shards = {}
    for split, numbered in found.items():
        if not numbered:
            raise FetchError(f"{repo}@{sha[:12]} holds no {split} shards (*-{split}-NNNN.tar); is it a WebDataset "
                             "copy of ImageNet?")  # fmt: skip
        missing = sorted(set(range(max(numbered) + 1)) - set(numbered))
        if missing:
            raise FetchError(f"{repo}@{sha[:12]}: {split} shard numbers {missing[:5]} are missing")
        shards[split] = [numbered[i] for i in sorted(numbered)]
    splits = (info or {}).get("splits", {})
    counts = {"train": splits.get("train", {}).get("num_samples"),
              "val": splits.get("validation", {}).get("num_samples"), "classes": 1000}  # fmt: skip
    return {"name": repo, "layout": "webdataset", "revision": sha, "shards": shards, "counts": counts}


def read_small_file(source: HubSource, name: str, limit: int = 1 << 20) -> bytes:
    """A small file of the repository (``_info.json``), through the same resolve path as the shards."""
    size = source.stat(name).size
    if size > limit:
        raise FetchError(f"{source.describe()}{name} is {size:,} bytes; expected a small metadata file")
    return b"".join(source.read(name, 0, size))
