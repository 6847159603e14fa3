"""``hub-table``: pin a Hugging Face hub dataset's shards (names, sizes, SHA-256s, the commit) in a dataset table."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import urllib3

from bootstrap.common.errors import FetchError
from bootstrap.common.progress import human_bytes
from bootstrap.common.state import atomic_write_json
from bootstrap.dataset.archives import dataset_from_dict, hub_repo
from bootstrap.fetch import hub
from bootstrap.fetch.sources import ENV_HF_TOKEN, Credentials, TransientError
from cdk_app.config import StagingConfig
from scripts.common import OperatorError

HELP = "pin a hub dataset's shards (hf://owner/name) in a dataset table for dataset_table"
INFO = "_info.json"


def add_arguments(parser: argparse.ArgumentParser, deployed: StagingConfig) -> None:
    parser.add_argument("source", help="the hub dataset, e.g. hf://timm/imagenet-1k-wds")
    parser.add_argument("--revision", default="main", help="branch, tag or commit to pin (default: main)")
    parser.add_argument("--out", type=Path, default=Path("hub-table.json"),
                        help="where to write the table (default hub-table.json)")  # fmt: skip


def command(args: argparse.Namespace) -> tuple[Any, str]:
    repo, token = hub_repo(args.source), os.environ.get(ENV_HF_TOKEN)
    if not token:
        raise OperatorError(f"set {ENV_HF_TOKEN} to a token of an account that accepted the dataset's terms "
                            f"(https://huggingface.co/datasets/{repo})")  # fmt: skip
    table = pin(repo, args.revision, Credentials(token=token), os.environ.get(hub.ENV_ENDPOINT, hub.HUB_ENDPOINT))
    atomic_write_json(args.out, table)
    spec = dataset_from_dict(table, str(args.out))
    train, val = spec.shards["train"], spec.shards["val"]
    size = sum(int(s.size or 0) for s in (*train, *val))
    summary = {"table": str(args.out), "repo": repo, "revision": spec.revision, "train_shards": len(train),
               "val_shards": len(val), "bytes": size, "counts": table["counts"]}  # fmt: skip
    return summary, (
        f"{args.out}: {repo} at {spec.revision}, {len(train)} train + {len(val)} val shards, {human_bytes(size)}, "
        f"{spec.train_images or '?'} + {spec.val_images or '?'} images\n"
        f"next: set dataset_table to {args.out} and source to hf://{repo} (cdk.json or -c), "
        'and put the token in the source secret as {"token": "hf_…"}'
    )


def pin(repo: str, revision: str, credentials: Credentials, endpoint: str) -> dict[str, Any]:
    """The table for ``repo`` at the commit ``revision`` names, with the counts of its ``_info.json`` if any."""
    pool = urllib3.PoolManager(retries=urllib3.Retry(total=3, backoff_factor=1.0))
    try:
        sha, files = hub.list_files(pool, endpoint, repo, revision, credentials)
        info = None
        if any(entry.get("path") == INFO for entry in files):
            source = hub.HubSource(repo, sha, credentials, endpoint=endpoint, pool=pool)
            info = json.loads(hub.read_small_file(source, INFO))
    except (FetchError, TransientError) as e:
        raise OperatorError(f"{e}; run hub-table again") from None
    except json.JSONDecodeError:
        raise OperatorError(f"{repo}/{INFO} is not JSON; the sample counts cannot be read from it") from None
    return hub.shard_table(repo, sha, files, info)
