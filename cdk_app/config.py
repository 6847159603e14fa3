"""The app's one configuration: CDK context (cdk.json defaults, ``-c key=value``) read once into a frozen dataclass.

Every key is a field below with its default.  ``-c`` values arrive as strings,
so each is coerced to the field's type; a value that does not fit, or a key
that is not a field (a typo), fails synth with a message naming the key.
Context keys that belong to the CDK itself (feature flags ``@aws-cdk/...``,
``aws:cdk:...``, lookups ``availability-zones:...``) are not ours and are skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints

from bootstrap import settings
from bootstrap.common.errors import ConfigError as TableError
from bootstrap.contract import names
from bootstrap.dataset.archives import HUB_SCHEME, dataset_from_dict, hub_repo

EBS_SIZE_GIB = {"sc1": (125, 16384), "st1": (125, 16384), "gp3": (1, 65536)}
GP3_IOPS = (3000, 80000)
GP3_THROUGHPUT_MIB_S = (125, 2000)
INITIALIZATION_RATE_MIB_S = (100, 300)
AL2023_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"

_NAME = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
_ACCOUNT = re.compile(r"^\d{12}$")
_VPC_ID = re.compile(r"^vpc-[0-9a-f]{8,17}$")
_SECRET_NAME = re.compile(r"^[A-Za-z0-9/_+=.@-]{1,512}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SSM_NAME = re.compile(r"^/[A-Za-z0-9_.\-/]+$")


_Need = Callable[[str, bool, str], None]


class ConfigError(ValueError):
    """A context value that cannot work; the message names the key and says what would."""


@dataclass(frozen=True)
class StagingConfig:
    name: str = names.DEFAULT_PIPELINE
    """Pipeline name: prefix of the stacks and parameters, value of the pipeline tag."""
    account: str | None = None
    """Target account; with region unset too, CDK_DEFAULT_ACCOUNT/REGION (or an environment-agnostic synth)."""
    region: str | None = None
    # -- the dataset source ----------------------------------------------------------
    source: str = "https://image-net.org/data/ILSVRC/2012"
    """https:// base URL or s3:// prefix holding the archives, or hf://owner/name (with its shard table)."""
    source_needs_credentials: bool = True
    """The https:// or hf:// source needs a login or token, read at run time from a Secrets Manager secret."""
    source_secret: str | None = None
    """An existing secret holding it; unset: the storage stack creates ``<name>/source-credentials``."""
    # -- the download instance ----------------------------------------------------------
    download_instance_type: str = "t2.large"
    cpu_credits: str = "unlimited"
    detailed_monitoring: bool = True
    download_ami_parameter: str = AL2023_PARAMETER
    data_volume_type: str = "sc1"
    data_volume_gib: int = 1000
    keep_data_volume: bool = False
    """Keep the data volume when the snapshot has completed (the instance is terminated either way)."""
    vpc_id: str | None = None
    """Use this VPC (looked up at synth, cached in cdk.context.json) instead of creating a small public one."""
    subnet_type: str = "public"
    """With vpc_id: its public subnets (the instances get public addresses) or its private ones (through its NAT)."""
    vpc_endpoints: bool = True
    """In private subnets: endpoints for S3 (gateway) and the AWS APIs the instances call (interface)."""
    # -- what the engine does (bootstrap keys) -------------------------------------------
    # (their defaults and ranges are the engine's: bootstrap.settings)
    resize: int = settings.default("resize")
    quality: int = settings.default("quality")
    center_crop: bool = settings.default("center_crop")
    parts: int = settings.default("parts")
    formats: str = settings.default("formats")
    """What pack writes besides the RecordIO: webdataset, tree (comma-separated); the dataset volume holds them all."""
    keep_tree: bool = settings.default("keep_tree")
    dataset_snapshot: str = settings.default("dataset_snapshot")
    """packed: GPU instances restore a right-sized volume of the packed data; work-volume: the whole data volume."""
    max_failure_rate: float = settings.default("max_failure_rate")
    backup_prefix: str = "imagenet/"
    dataset_table: dict[str, Any] | None = None
    """Another dataset in ILSVRC2012's layout: its archive table (``bootstrap.dataset.archives``); unset: ILSVRC2012.
    With ``-c`` it is the table's JSON text."""
    # -- snapshots and lifecycle ---------------------------------------------------------
    dlm_interval_hours: int = 24
    """The data volume is also snapshotted on this schedule while it exists (0 turns the policy off)."""
    dlm_retain: int = 3
    dlm_copy_regions: tuple[str, ...] = ()
    janitor_interval_minutes: int = 60
    # -- GPU fleets -----------------------------------------------------------------------
    gpu_instance_types: tuple[str, ...] = ("g5.xlarge",)
    gpu_ami_parameter: str = DLAMI_PARAMETER
    gpu_root_gib: int = 100
    restored_volume_type: str = "gp3"
    restored_iops: int = 3000
    restored_throughput: int = 125
    restored_initialization_rate: str = "auto"
    """EBS loads every block of the restored volume at this rate (MiB/s): auto picks one from the snapshot's size
    (fully initialized within 4 minutes where 300 MiB/s allows); off leaves lazy loading on first read."""
    local_nvme: bool = False
    """GPU instances copy the dataset to their instance-store NVMe disks at boot and read it from there."""
    gpu_user_data: tuple[str, ...] = ()
    """Shell commands of the user's, run as root on every GPU instance once its dataset is mounted (after attach)."""
    alarm_email: str | None = None
    """Subscribe this address to the alerts topic (snapshot failed, teardown failed, errors on the instance)."""
    fleet_asg: bool = False
    """Also create an Auto Scaling group from the template with desired capacity 0."""

    def __post_init__(self) -> None:
        for key, problem in self._problems():
            raise ConfigError(f"context key {key!r}: {problem} (got {getattr(self, key)!r})")

    def _problems(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []

        def need(key: str, ok: bool, problem: str) -> None:
            if not ok:
                found.append((key, problem))

        self._pipeline_problems(need)
        self._download_problems(need)
        self._fleet_problems(need)
        for key, value in self.engine.items():  # the engine's own schema: one range per knob
            problem = settings.problem(key, value)
            need(key, problem is None, problem or "")
        return found

    def _pipeline_problems(self, need: _Need) -> None:
        need("name", bool(_NAME.match(self.name)), "3-32 lowercase letters, digits and hyphens, starting with a letter")
        need("account", self.account is None or bool(_ACCOUNT.match(self.account)), "a 12-digit account id")
        need("region", self.region is None or bool(_REGION.match(self.region)), "a region like us-east-1")
        need("source", self.source.startswith(("https://", "s3://", HUB_SCHEME)),
             "an https:// URL, an s3:// prefix or hf://owner/name")  # fmt: skip
        self._hub_problems(need)
        need("source_secret", self.source_secret is None or bool(_SECRET_NAME.match(self.source_secret)),
             "a Secrets Manager secret name")  # fmt: skip
        need("backup_prefix", not self.backup_prefix.startswith("/"), "an S3 key prefix without a leading /")
        table = _table_problem(self.dataset_table) if self.dataset_table is not None else None
        need("dataset_table", table is None, table or "")
        need("alarm_email", self.alarm_email is None or bool(_EMAIL.match(self.alarm_email)), "an email address")
        need("janitor_interval_minutes", 5 <= self.janitor_interval_minutes <= 1440, "5-1440 minutes")
        need("dlm_interval_hours", self.dlm_interval_hours in (0, 1, 2, 3, 4, 6, 8, 12, 24),
             "0 (off) or one of DLM's intervals: 1, 2, 3, 4, 6, 8, 12, 24")  # fmt: skip
        need("dlm_retain", 1 <= self.dlm_retain <= 1000, "1-1000 snapshots")
        regions = self.dlm_copy_regions
        need("dlm_copy_regions", all(_REGION.match(r) for r in regions) and len(regions) <= 3,
             "at most 3 regions like us-west-2")  # fmt: skip
        for key in ("download_ami_parameter", "gpu_ami_parameter"):
            need(key, bool(_SSM_NAME.match(getattr(self, key))), "an SSM parameter name starting with /")

    def _hub_problems(self, need: _Need) -> None:
        """An hf:// source: the repository's spelling, and that repository's shard table in ``dataset_table``."""
        if not self.source.startswith(HUB_SCHEME):
            return
        try:
            repo = hub_repo(self.source)
        except TableError as e:
            need("source", False, str(e))
            return
        hub_table = self.dataset_table or {}
        pinned = hub_table.get("layout") == "webdataset" and hub_table.get("name") == repo
        need("dataset_table", pinned, f"the shard table of {repo}: python -m scripts hub-table {self.source} "
             "writes it")  # fmt: skip

    def _download_problems(self, need: _Need) -> None:
        need("download_instance_type", bool(_INSTANCE_TYPE.match(self.download_instance_type)), "like t2.large")
        need("cpu_credits", self.cpu_credits in ("standard", "unlimited"), "standard or unlimited")
        need("data_volume_type", self.data_volume_type in EBS_SIZE_GIB, f"one of {', '.join(EBS_SIZE_GIB)}")
        low, high = EBS_SIZE_GIB.get(self.data_volume_type, (1, 65536))
        need("data_volume_gib", low <= self.data_volume_gib <= high,
             f"{self.data_volume_type} volumes are {low}-{high} GiB; ImageNet needs about 400")  # fmt: skip
        need("vpc_id", self.vpc_id is None or bool(_VPC_ID.match(self.vpc_id)), "like vpc-0123456789abcdef0")
        need("subnet_type", self.subnet_type in ("public", "private"), "public or private")
        need("subnet_type", self.subnet_type == "public" or self.vpc_id is not None,
             "private subnets need an existing VPC (vpc_id); the VPC this app makes has public ones only")  # fmt: skip

    def _fleet_problems(self, need: _Need) -> None:
        need("gpu_instance_types", bool(self.gpu_instance_types) and all(_INSTANCE_TYPE.match(t) for t in
             self.gpu_instance_types), "one or more types like g5.xlarge")  # fmt: skip
        need("gpu_user_data", all(c.strip() and "\n" not in c for c in self.gpu_user_data),
             "shell commands, one per list item, none empty or spanning lines")  # fmt: skip
        need("gpu_root_gib", 30 <= self.gpu_root_gib <= 16384, "30-16384 GiB (the DLAMI needs at least 30)")
        need("restored_volume_type", self.restored_volume_type in ("gp3", "sc1", "st1"), "gp3, st1 or sc1")
        if self.restored_volume_type == "gp3":
            need("restored_iops", GP3_IOPS[0] <= self.restored_iops <= GP3_IOPS[1], "gp3 IOPS are 3000-80000")
            need("restored_throughput", GP3_THROUGHPUT_MIB_S[0] <= self.restored_throughput <= GP3_THROUGHPUT_MIB_S[1]
                 and self.restored_throughput <= self.restored_iops / 4,
                 "gp3 throughput is 125-2000 MiB/s and at most restored_iops/4")  # fmt: skip
        rate = self.restored_initialization_rate
        low, high = INITIALIZATION_RATE_MIB_S
        need("restored_initialization_rate", rate in ("auto", "off") or (rate.isdigit() and low <= int(rate) <= high),
             "auto (the lowest rate that loads it within 4 minutes), off (lazy loading) or 100-300 MiB/s")  # fmt: skip

    @property
    def engine(self) -> dict[str, Any]:
        """The engine settings (``bootstrap.settings`` keys) this context sets; the download stack passes them on."""
        return {"source": self.source, "resize": self.resize, "quality": self.quality,
                "center_crop": self.center_crop, "parts": self.parts, "keep_tree": self.keep_tree,
                "formats": self.formats, "dataset_snapshot": self.dataset_snapshot,
                "max_failure_rate": self.max_failure_rate}  # fmt: skip

    # -- names everything else derives ---------------------------------------------------

    @property
    def snapshot_parameter(self) -> str:
        return names.snapshot_parameter(self.name)

    @property
    def status_parameter(self) -> str:
        return names.status_parameter(self.name)

    @property
    def uses_secret(self) -> bool:
        return self.source_needs_credentials and self.source.startswith(("https://", HUB_SCHEME))

    @property
    def secret_name(self) -> str:
        return self.source_secret or f"{self.name}/source-credentials"

    @property
    def creates_secret(self) -> bool:
        return self.uses_secret and not self.source_secret

    @property
    def metric_namespace(self) -> str:
        return names.METRIC_NAMESPACE


def _table_problem(table: dict[str, Any]) -> str | None:
    """What is wrong with a dataset table, in the engine's own words (it reads the same table on the instance)."""
    try:
        dataset_from_dict(table)
    except TableError as e:
        return str(e)
    return None


_TYPES: dict[str, type | tuple[type, ...]] = {"bool": bool, "int": int, "float": (int, float), "str": str,
                                               "str | None": str, "tuple": list, "dict | None": dict}  # fmt: skip


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(text)
    return text.lower() == "true"


def _items(text: str) -> tuple[str, ...]:
    items = json.loads(text) if text.startswith("[") else text.split(",")
    return tuple(str(item).strip() for item in items if str(item).strip())


_FROM_TEXT: dict[str, Callable[[str], Any]] = {
    "bool": _bool,
    "int": int,
    "float": float,
    "dict | None": lambda text: json.loads(text) if text else None,
    "str | None": lambda text: text or None,
    "tuple": _items,
}
"""How a ``-c`` string becomes each field type."""


def _coerce(key: str, hint: str, value: Any) -> Any:
    """A context value as the field's type: ``-c`` gives strings ("2000", "false", "a,b"), cdk.json JSON values."""
    if isinstance(value, str) and hint != "str":
        try:
            return _FROM_TEXT[hint](value)
        except ValueError:
            pass
    elif isinstance(value, _TYPES[hint]) and not (hint in ("int", "float") and isinstance(value, bool)):
        if isinstance(value, list):
            return tuple(str(item) for item in value)
        return float(value) if isinstance(value, int | float) and hint == "float" else value
    raise ConfigError(f"context key {key!r}: expected {hint}, got {value!r}")


def _is_ours(key: str) -> bool:
    return not (key.startswith("@") or ":" in key)


def _hint_name(hint: Any) -> str:
    if hint in (str, int, float, bool):
        return str(hint.__name__)
    if str(hint).startswith("tuple"):
        return "tuple"
    return "dict | None" if str(hint).startswith("dict") else "str | None"


def from_context(context: Mapping[str, Any]) -> StagingConfig:
    """The config from CDK context (``app.node.get_all_context()``); keys that are not ours are skipped."""
    hints = {name: _hint_name(hint) for name, hint in get_type_hints(StagingConfig).items()}
    present = [key for key in context if _is_ours(key)]
    unknown = sorted(set(present) - set(hints))
    if unknown:
        raise ConfigError(f"unknown context key {unknown[0]!r}; valid keys are: {', '.join(sorted(hints))}")
    values = {key: _coerce(key, hints[key], context[key]) for key in present if context[key] is not None}
    return StagingConfig(**values)
