"""Crash-safe files: write to a temporary name, fsync, rename; stage markers.

A stage or part counts as done only when its marker exists, and a marker is
written only after the outputs it vouches for are durable.  A run killed at
any moment therefore either sees the marker (and skips) or does not (and
redoes or resumes that piece).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bootstrap.common.errors import ConfigError


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    """The JSON value in ``path``, or ``None`` when the file does not exist."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def read_json_file(path: Path, what: str) -> Any:
    """The JSON value of a file a person wrote; a missing or malformed one is a ``ConfigError`` naming ``what``."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} {path} is not valid JSON: {e}") from None


class Markers:
    """Done-markers for named steps, kept in one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, name: str) -> Path:
        return self.root / f"{name}.done"

    def is_done(self, name: str) -> bool:
        return self._path(name).exists()

    def info(self, name: str) -> Any:
        return read_json(self._path(name))

    def mark(self, name: str, info: Any = None) -> None:
        atomic_write_json(self._path(name), info if info is not None else {})

    def clear(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)
