"""The engine's settings: one schema, each knob defined once with its default, range and help.

Everything else is derived from ``PrepConfig``'s fields: each command's CLI
flags (``add_flags``: only the settings that command uses), the config-file
loader (``load_config``: defaults, then what the data directory was made with
for a single stage, then a JSON file, then flags), and the CDK app's check of
the ``engine`` dict it writes to the instance (``problems``).  Keys are the
flag names with underscores.  An unknown key is an error naming the closest
key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootstrap.common.argparsing import number
from bootstrap.common.errors import ConfigError
from bootstrap.common.state import read_json_file
from bootstrap.contract import names
from bootstrap.layout import STAGES, DataLayout


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
    items: tuple[str, ...] | None = None
    """A comma-separated list, each item one of these."""
    stages: tuple[str, ...] = ()
    """The commands that take it as a flag; none: set only in the config file (the CDK app writes it)."""

    def allows(self, value: Any) -> bool:
        if value is None:
            return True
        if self.choices is not None:
            return value in self.choices
        if self.items is not None:
            return isinstance(value, str) and all(item.strip() in self.items for item in value.split(","))
        return not (
            (self.low is not None and value < self.low)
            or (self.high is not None and value > self.high)
            or (self.above is not None and value <= self.above)
        )

    def describe(self) -> str:
        if self.choices is not None:
            return f"one of {', '.join(map(str, self.choices))}"
        if self.items is not None:
            return f"a comma-separated list of {', '.join(self.items)}"
        if self.above is not None:
            return f"more than {self.above:g}"
        if self.low is None:
            return "any value"
        if self.high is None:
            return f"at least {self.low:g}"
        return f"{self.low:g}-{self.high:g}"


ENGINE = ("run", *STAGES, "status", "mount-data")
"""The engine's commands that read this settings object (the GPU instance's commands have flags of their own)."""
DATA = ("run", *STAGES)
FETCH, PACK = ("run", "fetch"), ("run", "pack")
FORMATS = ("recordio", "webdataset", "tree")
"""What pack can write in its one pass. recordio is always written: verify, inspect and the read check start there."""


def knob(default: Any, help: str, **limits: Any) -> Any:
    return dataclasses.field(default=default, metadata={"knob": Knob(help, **limits)})


@dataclass(frozen=True)
class PrepConfig:
    data_dir: Path = knob(Path(names.DATA_DIR), "the data directory: the data volume's mount point (default {default})",
                          stages=ENGINE)  # fmt: skip
    source: str | None = knob(None, "https:// base URL, s3:// prefix or local directory with the archives, or "
                              "hf://owner/name (a hub dataset, with its shard table)", stages=FETCH)  # fmt: skip
    source_secret: str | None = knob(None, "Secrets Manager secret holding the source credentials", stages=FETCH)
    """The secret's value is JSON with the source credentials."""
    dataset_table: Path | None = knob(None, "archive table JSON for another dataset, or the shard table of a hub "
                                      "source (default: ILSVRC2012)", stages=DATA)  # fmt: skip
    follow_download: bool = knob(True, "run packs each archive while it downloads (default: on)", stages=("run",))
    backup_while_packing: bool = knob(True, "run backs each archive up once verified and each split once packed, "
                                      "while the rest is still made (default: on)", stages=("run",))  # fmt: skip
    connections: int = knob(8, "parallel connections per archive (default {default}; at least 1)", low=1,
                            stages=FETCH)  # fmt: skip
    chunk_mib: int = knob(64, "download range size in MiB (default {default}; at least 1)", low=1, stages=FETCH)
    stall_seconds: float = knob(60.0, "a download connection silent this long is dropped and its range fetched again "
                                "from where it stopped (default {default:g}; more than 0)", above=0,
                                stages=FETCH)  # fmt: skip
    resize: int = knob(256, "short side in pixels, 0 keeps the size (default {default}; 0-4096)", low=0, high=4096,
                       stages=PACK)  # fmt: skip
    center_crop: bool = knob(False, "square centre crop (default: off)", stages=PACK)
    quality: int = knob(90, "JPEG quality 1-100, or PNG compression 0-9 (default {default})", low=0, high=100,
                        stages=PACK)  # fmt: skip
    encoding: str = knob(".jpg", "record image encoding (default {default})", choices=(".jpg", ".png"), stages=PACK)
    color: int = knob(1, "1 colour, 0 gray, -1 unchanged (default {default})", choices=(-1, 0, 1), stages=PACK)
    pass_through: bool = knob(False, "keep intact images as they are (default: off)", stages=PACK)
    upscale: bool = knob(False, "enlarge images smaller than --resize (default: off)", stages=PACK)
    workers: int = knob(0, "transcoding processes (default 0: one per CPU)", low=0, stages=PACK)
    parts: int = knob(1, "split each .rec into N parts with their own idx (default {default}; 1-1024)", low=1,
                      high=1024, stages=PACK)  # fmt: skip
    seed: int = knob(100, "shuffle seed (default {default}, as im2rec)", stages=PACK)
    shuffle_train: bool = knob(True, "shuffle train records (default: on)", stages=PACK)
    shuffle_val: bool = knob(False, "shuffle val records (default: off)", stages=PACK)
    formats: str = knob("recordio", "what pack writes, comma-separated: recordio (always), webdataset, tree "
                        "(default {default})", items=FORMATS, stages=PACK)  # fmt: skip
    keep_tree: bool = knob(False, "add tree to --formats (default: off)", stages=PACK)
    shard_mib: int = knob(1024, "size of a WebDataset shard in MiB (default {default}; at least 1)", low=1,
                          stages=PACK)  # fmt: skip
    max_failure_rate: float = knob(
        0.001, "fail when more than this fraction of images cannot be packed (default {default}; 0-1)", low=0.0,
        high=1.0, stages=PACK,
    )  # fmt: skip
    checkpoint_seconds: float = knob(30.0, "how often packing checkpoints (default {default:g}; at least 0)", low=0,
                                     stages=PACK)  # fmt: skip
    bucket_mib: int = knob(128, "shuffle bucket size in MiB, the shuffle's memory bound (default {default})", low=1,
                           stages=PACK)  # fmt: skip
    max_image_mib: int = knob(64, "refuse archive members larger than this (default {default}; at least 1)", low=1,
                              stages=PACK)  # fmt: skip
    sample_every: int = knob(50, "decode every Nth record (default {default}; at least 1)", low=1,
                             stages=("run", "verify"))  # fmt: skip
    # -- on the instance: backup, snapshot, publish, status --------------------------
    pipeline: str = knob(names.DEFAULT_PIPELINE, "name in tags, so teardown and fleets find its resources")
    region: str | None = knob(None, "AWS region; by default the instance's own (IMDSv2)")
    bucket: str | None = knob(None, "S3 bucket for the backup (default: none, no backup)", stages=("run", "backup"))
    prefix: str = knob("", "key prefix in the backup bucket (default: none)", stages=("run", "backup"))
    storage_class: str = knob("STANDARD", "storage class of backed-up files")
    large_storage_class: str = knob("STANDARD_IA", "storage class of files of 1 GiB and more")
    sse: str = knob("AES256", "server-side encryption of the backup", choices=("AES256", "aws:kms"))
    kms_key_id: str | None = knob(None, "KMS key of the backup with sse aws:kms")
    snapshot_parameter: str | None = knob(None, "SSM parameter to publish the snapshot id to (default: none, "
                                           "no snapshot)", stages=("run", "publish"))  # fmt: skip
    status_parameter: str | None = knob(None, "SSM parameter to copy the live status to (default: none)",
                                         stages=("run",))  # fmt: skip
    status_interval: float = knob(30.0, "seconds between status copies to SSM", above=0)
    heartbeat_alarm: str | None = knob(None, "the alarm on the run's heartbeat; no heartbeat when unset")
    snapshot_poll_seconds: float = knob(15.0, "seconds between checks of a pending snapshot", above=0)
    dataset_snapshot: str = knob("packed", "what GPU instances restore: the packed data on a volume of its own size "
                                 "(packed), or the whole work volume with the archives (work-volume)",
                                 choices=("packed", "work-volume"), stages=("run", "snapshot"))  # fmt: skip
    publish_mount: Path = knob(Path(names.PUBLISH_MOUNT), "where the dataset volume is mounted while it is filled",
                               )  # fmt: skip
    data_volume_id: str | None = knob(None, "the EBS volume id of the data volume", stages=("mount-data",))
    data_device: str = knob(names.DATA_DEVICE, "the data volume's device name (Xen; Nitro uses the serial)")
    sys_root: Path = knob(Path("/sys"), "where sysfs is (tests point it elsewhere)")
    dev_root: Path = knob(Path("/dev"), "where device nodes are (tests point it elsewhere)")
    fstab: Path = knob(Path("/etc/fstab"), "the fstab mount-data adds the data volume to")

    def __post_init__(self) -> None:
        bad = problems(dataclasses.asdict(self))
        if bad:
            raise ConfigError("; ".join(bad))

    @property
    def paths(self) -> DataLayout:
        return DataLayout(self.data_dir)

    @property
    def output_formats(self) -> tuple[str, ...]:
        return output_formats(self.formats, self.keep_tree)


def output_formats(formats: str, keep_tree: bool) -> tuple[str, ...]:
    """The formats pack writes, in ``FORMATS`` order: ``formats``, plus recordio, plus tree with ``keep_tree``."""
    asked = {item.strip() for item in formats.split(",")} | {"recordio"} | ({"tree"} if keep_tree else set())
    return tuple(f for f in FORMATS if f in asked)


FIELDS = {f.name: f for f in dataclasses.fields(PrepConfig)}
KNOBS: dict[str, Knob] = {name: f.metadata["knob"] for name, f in FIELDS.items()}


def default(key: str) -> Any:
    return FIELDS[key].default


def problem(key: str, value: Any) -> str | None:
    """What is wrong with ``value`` for setting ``key``; ``None`` when it works. The CDK app checks its context so."""
    if key not in KNOBS:
        return f"not an engine setting{suggest(key, KNOBS)}"
    return None if KNOBS[key].allows(value) else f"must be {KNOBS[key].describe()}"


def problems(values: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``values``, one line per key."""
    return [f"invalid value for {key}: {value!r} ({found})" for key, value in values.items()
            if (found := problem(key, value)) is not None]  # fmt: skip


def suggest(word: str, known: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for the closest of ``known``, else where the valid names are listed."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else "; the README's configuration table lists every key"


def flag_keys(stage: str) -> list[str]:
    """The settings ``stage`` takes as flags, in field order."""
    return [name for name in FIELDS if stage in KNOBS[name].stages]


def add_flags(parser: argparse.ArgumentParser, stage: str) -> None:
    """One flag per setting ``stage`` uses; a flag left out is ``None`` (not given)."""
    for name in flag_keys(stage):
        f, spec = FIELDS[name], KNOBS[name]
        flag = "--" + name.replace("_", "-")
        text = spec.help.format(default=f.default)
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, type=flag_type(name), choices=spec.choices, help=text)


def flag_type(key: str) -> Callable[[str], Any]:
    """Parse a flag's text as its setting's type and check its range, so the message names both."""
    kind, spec = _kind(key), KNOBS[key]
    if kind in (int, float) and spec.choices is None:
        return number(kind, low=spec.low, high=spec.high, above=spec.above)

    def parse(text: str) -> Any:
        if kind is Path:
            if not text.strip():
                raise argparse.ArgumentTypeError("an empty path; give a directory or file")
            return Path(text)
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind.__name__} ({spec.describe()})") from None
        if spec.items is not None and not spec.allows(value):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {spec.describe()}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


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


def read_config_file(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, every key a setting (a typo is named with the closest key)."""
    raw = read_json_file(path, "config file")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key {unknown[0]!r}{suggest(unknown[0], FIELDS)}")
    return raw


def load_config(path: Path | None, overrides: Mapping[str, Any], inherited: Mapping[str, Any] | None = None
                ) -> PrepConfig:  # fmt: skip
    """Defaults, then ``inherited`` (what the data directory was made with), then the JSON object in ``path``, then
    ``overrides`` (flags; ``None`` means not given)."""
    values = {key: _coerce(key, value) for key, value in (inherited or {}).items() if key in FIELDS}
    values.update({key: _coerce(key, value) for key, value in (read_config_file(path) if path else {}).items()})
    values.update({key: _coerce(key, value) for key, value in overrides.items() if value is not None})
    return PrepConfig(**values)


def differences(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """``key old -> new`` for each setting that changed since ``recorded`` (a record that predates them: none)."""
    if not isinstance(recorded, Mapping):
        return []
    return [f"{key} {recorded.get(key)!r} -> {value!r}" for key, value in current.items()
            if key in recorded and recorded[key] != value]  # fmt: skip
