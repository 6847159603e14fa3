"""The README's DALI, WebDataset and ImageNet snippets, run as written on a dataset the engine packed in every format.

Each snippet starts with one settings line (mount point, batch size, workers,
device); the test points it at the packed data and the CPU and runs the rest
of the snippet unchanged.  Every format must then give each image the label
its record carries: ``make test-torch`` (its own venv, see requirements-torch.txt).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from bootstrap.engine import Engine
from bootstrap.settings import PrepConfig
from scripts.synthetic_imagenet import Spec, generate

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    archives = generate(tmp_path_factory.mktemp("archives"), Spec(classes=6, train_per_class=5, val_per_class=2))
    config = PrepConfig(data_dir=tmp_path_factory.mktemp("data"), source=str(archives.root),
                        dataset_table=archives.table, resize=64, workers=1, max_failure_rate=0.2,
                        formats="webdataset,tree")  # fmt: skip
    engine = Engine(config)
    engine.run()
    return engine


def train_labels(engine: Engine) -> Counter[int]:
    lst = (engine.paths.recordio / "train.lst").read_text().splitlines()
    return Counter(int(float(line.split("\t")[1])) for line in lst)


def run_snippet(name: str, setting: str, replacement: str) -> dict[str, Any]:
    """Run the README's snippet ``name`` with its settings line replaced; returns its variables."""
    readme = (ROOT / "README.md").read_text()
    code = re.search(rf"<!-- snippet:{name} -->\n```python\n(.*?)```", readme, re.S)
    assert code is not None, f"the README has no {name} snippet"
    assert setting in code.group(1), f"the {name} snippet's settings line changed"
    body = code.group(1).replace(setting, replacement)
    body = body.replace("    pass  # your training step", "    seen.append((images, labels))")
    namespace: dict[str, Any] = {"seen": []}
    exec(body, namespace)  # the README's own code
    return namespace


def test_the_dali_snippet_reads_every_record_of_the_shard(packed: Engine) -> None:
    namespace = run_snippet("dali", 'DATA, BATCH, DEVICE, GPU = "/data", 256, "mixed", 0',
                            f'DATA, BATCH, DEVICE, GPU = "{packed.paths.root}", 8, "cpu", None')  # fmt: skip
    labels = Counter(int(x) for _, batch in namespace["seen"] for x in batch.tolist())
    assert labels == train_labels(packed)
    images = namespace["seen"][0][0]
    assert images.dtype == torch.float32 and tuple(images.shape[1:]) == (3, 224, 224)


def test_the_webdataset_snippet_reads_the_shards_with_their_labels(packed: Engine) -> None:
    namespace = run_snippet("webdataset", 'DATA, BATCH, WORKERS = "/data", 256, 8',
                            f'DATA, BATCH, WORKERS = "{packed.paths.root}", 8, 1')  # fmt: skip
    labels = Counter(int(x) for _, batch in namespace["seen"] for x in batch.tolist())
    assert labels == train_labels(packed)
    assert tuple(namespace["seen"][0][0].shape) == (8, 3, 224, 224)


def test_the_imagenet_snippet_loads_the_tree_as_it_is(packed: Engine) -> None:
    tree = packed.paths.tree
    before = {p.name: p.read_bytes() for p in tree.iterdir() if p.is_file()}
    namespace = run_snippet("imagefolder", 'DATA, BATCH, WORKERS = "/data", 256, 8',
                            f'DATA, BATCH, WORKERS = "{packed.paths.root}", 8, 1')  # fmt: skip
    # nothing parsed or written (the dataset volume is read-only): torchvision took meta.bin as it is
    assert {p.name: p.read_bytes() for p in tree.iterdir() if p.is_file()} == before
    labels = Counter(int(x) for _, batch in namespace["seen"] for x in batch.tolist())
    assert labels == train_labels(packed)
    train = namespace["train"]
    devkit = packed.organise()
    assert train.wnids == [c.wnid for c in devkit.classes]
    assert train.classes == [tuple(c.words.split(", ")) for c in devkit.classes]
