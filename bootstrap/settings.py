"""The engine's settings: one schema, each knob defined once with its default, range and help.

Everything else is derived from ``PrepConfig``'s fields: the engine's CLI flags
(``add_flags``), the config-file loader (``load_config``: defaults, then a
JSON file, then flags), and the CDK app's check of the ``engine`` dict it
writes to the instance (``problems``).  Keys are the flag names with
underscores.  An unknown key is an error, so a typo never silently falls back
to a default.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootstrap.common.errors import ConfigError
from bootstrap.common.state import read_json_file
from bootstrap.contract import names
from bootstrap.layout import DataLayout


@dataclass(frozen=True)
class Knob:
    """What a setting means and which values work; the default lives on the dataclass field."""

    help: str
    """Flag help; ``{default}`` is replaced by the default."""
    low: float | None = None
    high: float | None = None
    above: float | None = None
    """An exclusive lower bound."""
    choices: tuple[Any, ...] | None = None
    flag: bool = True
    """Also a command-line flag (the rest are set in the config file the CDK app writes)."""

    def allows(self, value: Any) -> bool:
        if value is None:
            return True
        if self.choices is not None:
            return value in self.choices
        return not (
            (self.low is not None and value < self.low)
            or (self.high is not None and value > self.high)
            or (self.above is not None and value <= self.above)
        )

    def describe(self) -> str:
        if self.choices is not None:
            return f"one of {', '.join(map(str, self.choices))}"
        if self.above is not None:
            return f"more than {self.above:g}"
        if self.high is None:
            return f"at least {self.low:g}"
        return f"{self.low:g}-{self.high:g}"


def knob(default: Any, help: str, **limits: Any) -> Any:
    return dataclasses.field(default=default, metadata={"knob": Knob(help, **limits)})


@dataclass(frozen=True)
class PrepConfig:
    data_dir: Path = knob(Path(names.DATA_DIR), "data volume mount point (default {default})")
    source: str | None = knob(None, "https:// base URL, s3:// prefix or local directory with the archives")
    source_secret: str | None = knob(None, "Secrets Manager secret holding the source credentials")
    """The secret's value is JSON with the source credentials."""
    dataset_table: Path | None = knob(None, "archive table JSON for another dataset (default: ILSVRC2012)")
    connections: int = knob(8, "parallel connections per archive (default {default})", low=1)
    chunk_mib: int = knob(64, "download range size in MiB (default {default})", low=1)
    resize: int = knob(256, "short side in pixels, 0 keeps the size (default {default})", low=0, high=4096)
    center_crop: bool = knob(False, "square centre crop")
    quality: int = knob(90, "JPEG quality 1-100, or PNG compression 0-9 (default {default})", low=0, high=100)
    encoding: str = knob(".jpg", "record image encoding (default {default})", choices=(".jpg", ".png"))
    color: int = knob(1, "1 colour, 0 gray, -1 unchanged (default {default})", choices=(-1, 0, 1))
    pass_through: bool = knob(False, "keep intact images as they are")
    upscale: bool = knob(False, "enlarge images smaller than --resize")
    workers: int = knob(0, "transcoding processes (default: one per CPU)", low=0)
    parts: int = knob(1, "split each .rec into N parts with their own idx (default {default})", low=1, high=1024)
    seed: int = knob(100, "shuffle seed (default {default}, as im2rec)")
    shuffle_train: bool = knob(True, "shuffle train records")
    shuffle_val: bool = knob(False, "shuffle val records")
    keep_tree: bool = knob(False, "also write train/<wnid>/ folders")
    max_failure_rate: float = knob(
        0.001, "fail when more images than this fraction cannot be packed", low=0.0, high=1.0
    )
    checkpoint_seconds: float = knob(30.0, "how often packing checkpoints (default {default:g})", low=0)
    bucket_mib: int = knob(128, "shuffle bucket size in MiB (memory bound of the shuffle)", low=1)
    max_image_mib: int = knob(64, "refuse archive members larger than this (default {default})", low=1)
    sample_every: int = knob(50, "verify decodes every Nth record (default {default})", low=1)
    # -- on the instance: backup, snapshot, publish, status --------------------------
    pipeline: str = knob(names.DEFAULT_PIPELINE, "name in tags, so teardown and fleets find its resources", flag=False)
    region: str | None = knob(None, "AWS region; by default the instance's own (IMDSv2)", flag=False)
    bucket: str | None = knob(None, "S3 bucket for the backup")
    prefix: str = knob("", "key prefix in the backup bucket")
    storage_class: str = knob("STANDARD", "storage class of backed-up files", flag=False)
    large_storage_class: str = knob("STANDARD_IA", "storage class of files of 1 GiB and more", flag=False)
    sse: str = knob("AES256", "server-side encryption of the backup", choices=("AES256", "aws:kms"), flag=False)
    kms_key_id: str | None = knob(None, "KMS key of the backup with sse aws:kms", flag=False)
    snapshot_parameter: str | None = knob(None, "SSM parameter to publish the snapshot id to")
    status_parameter: str | None = knob(None, "SSM parameter to copy the live status to")
    status_interval: float = knob(30.0, "seconds between status copies to SSM", above=0, flag=False)
    heartbeat_alarm: str | None = knob(None, "the alarm on the run's heartbeat; no heartbeat when unset", flag=False)
    snapshot_poll_seconds: float = knob(15.0, "seconds between checks of a pending snapshot", above=0, flag=False)
    dataset_snapshot: str = knob("packed", "what GPU instances restore: the packed data on a volume of its own size "
                                 "(packed), or the whole work volume with the archives (work-volume)",
                                 choices=("packed", "work-volume"))  # fmt: skip
    publish_tree: bool = knob(False, "also publish the class tree (keep_tree) on the dataset volume")
    publish_mount: Path = knob(Path(names.PUBLISH_MOUNT), "where the dataset volume is mounted while it is filled",
                               flag=False)  # fmt: skip
    data_volume_id: str | None = knob(None, "mount-data: the EBS volume id of the data volume")
    data_device: str = knob(names.DATA_DEVICE, "the data volume's device name (Xen; Nitro uses the serial)", flag=False)
    sys_root: Path = knob(Path("/sys"), "where sysfs is (tests point it elsewhere)", flag=False)
    dev_root: Path = knob(Path("/dev"), "where device nodes are (tests point it elsewhere)", flag=False)
    fstab: Path = knob(Path("/etc/fstab"), "the fstab mount-data adds the data volume to", flag=False)

    def __post_init__(self) -> None:
        bad = problems(dataclasses.asdict(self))
        if bad:
            raise ConfigError("; ".join(bad))

    @property
    def paths(self) -> DataLayout:
        return DataLayout(self.data_dir)


FIELDS = {f.name: f for f in dataclasses.fields(PrepConfig)}
KNOBS: dict[str, Knob] = {name: f.metadata["knob"] for name, f in FIELDS.items()}


def default(key: str) -> Any:
    return FIELDS[key].default


def problem(key: str, value: Any) -> str | None:
    """What is wrong with ``value`` for setting ``key``; ``None`` when it works. The CDK app checks its context so."""
    if key not in KNOBS:
        return f"not an engine setting; valid ones are: {', '.join(sorted(KNOBS))}"
    return None if KNOBS[key].allows(value) else f"must be {KNOBS[key].describe()}"


def problems(values: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``values``, one line per key."""
    return [f"invalid value for {key}: {value!r} ({found})" for key, value in values.items()
            if (found := problem(key, value)) is not None]  # fmt: skip


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per knob marked ``flag``, in field order; a flag left out is ``None`` (not given)."""
    for name, f in FIELDS.items():
        spec = KNOBS[name]
        if not spec.flag:
            continue
        flag = "--" + name.replace("_", "-")
        text = spec.help.format(default=f.default)
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = _kind(name)
            parser.add_argument(flag, type=_path_flag if kind is Path else kind, choices=spec.choices, help=text)


def _path_flag(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a directory or file")
    return Path(text)


def _kind(key: str) -> type:
    default_value = default(key)
    if default_value is not None:
        return type(default_value) if not isinstance(default_value, Path) else Path
    return Path if FIELDS[key].type in ("Path | None", Path) else str


def _coerce(key: str, value: Any) -> Any:
    if value is None:
        return None
    expected = _kind(key)
    if expected is Path:
        if not isinstance(value, str | Path) or not str(value).strip():
            raise ConfigError(f"config key {key!r} must be a non-empty path, got {value!r}")
        return Path(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"config key {key!r} must be {expected.__name__}, got {value!r}")
    return value


def _read_file(path: Path) -> dict[str, Any]:
    raw = read_json_file(path, "config file")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        valid = ", ".join(sorted(FIELDS))
        raise ConfigError(f"config file {path}: unknown key {unknown[0]!r}; valid keys are: {valid}")
    return raw


def load_config(path: Path | None, overrides: dict[str, Any]) -> PrepConfig:
    """Defaults, then the JSON object in ``path``, then ``overrides`` (flags; ``None`` means not given)."""
    values = {key: _coerce(key, value) for key, value in (_read_file(path) if path else {}).items()}
    values.update({key: _coerce(key, value) for key, value in overrides.items() if value is not None})
    return PrepConfig(**values)


def differences(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """``key old -> new`` for each setting that changed since ``recorded`` (a record that predates them: none)."""
    if not isinstance(recorded, Mapping):
        return []
    return [f"{key} {recorded.get(key)!r} -> {value!r}" for key, value in current.items()
            if key in recorded and recorded[key] != value]  # fmt: skip
