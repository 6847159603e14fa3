"""The EC2 instance types ``plan`` knows (``instance_types.json``, dated), and what burstable CPU credits allow.

A burstable instance (t2, t3, t3a) in ``standard`` mode runs above its
baseline only while it has credits: one credit is one vCPU at 100% for a
minute, it earns ``baseline x vCPUs x 60`` per hour up to 24 hours' worth,
and a t2 starts with 30 launch credits per vCPU.  In ``unlimited`` mode it
runs at full speed and pays for the credits it borrows beyond what it earns
(the "surplus", per vCPU-hour).  Source: the EC2 User Guide's burstable
performance pages; the numbers are in the JSON file next to this one.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootstrap.common.errors import ConfigError

TABLE = Path(__file__).resolve().parent / "instance_types.json"


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    usd_hour: float
    baseline_per_vcpu: float | None = None
    """Set for burstable types: the share of each vCPU it may use without credits."""
    gpu: str | None = None
    gpus: int = 0

    @property
    def family(self) -> str:
        return self.name.split(".")[0]


@dataclass(frozen=True)
class CpuTime:
    hours: float
    """Wall time to do the work."""
    surplus_vcpu_hours: float
    """Unlimited mode: vCPU-hours beyond the earned credits, which are billed."""
    how: str


class InstanceTable:
    def __init__(self, path: Path = TABLE) -> None:
        raw: dict[str, Any] = json.loads(path.read_text())
        self.path, self.date, self.region = path, str(raw["date"]), str(raw["region"])
        self.burstable: dict[str, Any] = raw["burstable"]
        self.types = {name: InstanceType(name, **row) for name, row in raw["types"].items()}

    def __getitem__(self, name: str) -> InstanceType:
        if name not in self.types:
            close = difflib.get_close_matches(name, list(self.types), n=1)
            families = sorted({t.family for t in self.types.values()})
            raise ConfigError(
                f"unknown instance type {name!r}{f' (did you mean {close[0]!r}?)' if close else ''}: "
                f"{self.path.name} ({self.date}) knows {', '.join(families)}; add a row to {self.path} with its "
                "vCPUs and price to plan for it"
            )
        return self.types[name]

    def surplus_usd(self, itype: InstanceType, vcpu_hours: float) -> float:
        """What borrowed credits cost (unlimited mode); only burstable types borrow."""
        rate = self.burstable["surplus_usd_per_vcpu_hour"].get(itype.family, 0.0)
        return vcpu_hours * float(rate)

    def cpu_time(self, itype: InstanceType, work_vcpu_hours: float, credits: str, idle_hours: float) -> CpuTime:
        """How long ``work_vcpu_hours`` of CPU takes after ``idle_hours`` of earning credits (the download)."""
        full = work_vcpu_hours / itype.vcpus
        if itype.baseline_per_vcpu is None:
            return CpuTime(full, 0.0, f"{itype.vcpus} vCPU")
        earn = itype.baseline_per_vcpu * itype.vcpus  # vCPU-hours earned per hour
        launch = float(self.burstable["launch_credits_per_vcpu"][itype.family]) * itype.vcpus / 60
        banked = min(launch + earn * idle_hours, launch + earn * float(self.burstable["max_balance_hours"]))
        if credits == "unlimited":
            surplus = max(0.0, work_vcpu_hours - banked - earn * full)
            return CpuTime(full, surplus, f"{itype.vcpus} vCPU (unlimited credits: {surplus:.1f} surplus vCPU-h)")
        if banked + earn * full >= work_vcpu_hours:
            return CpuTime(full, 0.0, f"{itype.vcpus} vCPU on {banked:.1f} banked vCPU-h of credits")
        hours = (work_vcpu_hours - banked) / earn
        return CpuTime(hours, 0.0, f"{banked:.1f} vCPU-h of banked credits, then the {earn:.1f} vCPU baseline "
                                   "(standard credits)")  # fmt: skip
