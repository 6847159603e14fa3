"""What ``plan`` reads: the dated price and GPU-rate files, and this project's own last benchmark."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
