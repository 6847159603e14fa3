"""What ``plan`` reads: the dated price and GPU-rate files, this project's own last benchmark, a dataset table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootstrap.common.errors import ConfigError
from bootstrap.dataset.archives import dataset_from_dict, load_dataset

ROOT = Path(__file__).resolve().parent.parent


def load_prices(path: Path = ROOT / "scripts" / "prices.json") -> dict[str, Any]:
    prices: dict[str, Any] = json.loads(path.read_text())
    return prices


def load_gpu_rates(path: Path = ROOT / "scripts" / "gpu_rates.json") -> dict[str, Any]:
    rates: dict[str, Any] = json.loads(path.read_text())
    return rates


@dataclass(frozen=True)
class Measured:
    """What ``make bench`` last measured, where it has: the pack rate and each format's bytes on disk."""

    images_per_vcpu_s: float | None = None
    format_ratios: tuple[tuple[str, float], ...] | None = None
    """Each format's bytes on disk over the RecordIO's."""


def measured(results: Path = ROOT / "bench" / "results.json") -> Measured:
    try:
        found = json.loads(results.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return Measured()
    pack, held = found.get("pack"), found.get("formats", {}).get("allocated_per_image")
    rate = float(pack["ours_images_per_s"]) / float(pack["processes"]) if pack else None
    ratios = tuple((name, round(held[name] / held["recordio"], 3)) for name in ("recordio", "webdataset", "tree"))
    return Measured(rate, ratios if held else None)


def dataset_inputs(path: Path | None, deployed: dict[str, Any] | None) -> dict[str, Any]:
    """``archive_bytes``, ``images`` and ``dataset`` from a dataset table (a file, else cdk.json's), if any."""
    if path is None and deployed is None:
        return {}
    spec = load_dataset(path) if path is not None else dataset_from_dict(deployed, "cdk.json's dataset_table")
    sizes = [f.size for f in spec.files()]
    if None in sizes:
        raise ConfigError(f"the dataset table {path or 'in cdk.json'} does not pin every file's size; the plan "
                            "needs them")  # fmt: skip
    kind = f"{spec.name}'s {'shards' if spec.sharded else 'archives'}"
    images = (spec.train_images or 0) + (spec.val_images or 0)
    return {"archive_bytes": sum(int(s or 0) for s in sizes), "dataset": kind,
            **({"images": images} if spec.train_images and spec.val_images else {})}  # fmt: skip
