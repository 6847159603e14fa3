"""Crash-safe files: write to a temporary name, fsync, rename; stage markers.

A stage or part counts as done only when its marker exists, and a marker is
written only after the outputs it vouches for are durable.  A run killed at
any moment therefore either sees the marker (and skips) or does not (and
redoes or resumes that piece).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from bootstrap.common.errors import ConfigError

log = logging.getLogger(__name__)


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
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk must not leave a half-written temporary behind
        raise
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


def read_state(path: Path) -> Any:
    """A state file's JSON value; ``None`` when it is missing or unreadable (a crash or a hand edit), with a warning
    naming it: state is a record of work done, so losing it means redoing that work, never a traceback."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError, IsADirectoryError) as e:
        log.warning("%s is unreadable (%s); treating what it recorded as not done", path, e)
        return None


class Markers:
    """Done-markers for named steps, kept in one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, name: str) -> Path:
        return self.root / f"{name}.done"

    def is_done(self, name: str) -> bool:
        return self.info(name) is not None

    def info(self, name: str) -> Any:
        """The marker's record; ``None`` when absent or unreadable (then it is redone), or not a JSON object."""
        value = read_state(self._path(name))
        if value is not None and not isinstance(value, dict):
            log.warning("%s does not hold a record; treating it as not done", self._path(name))
            return None
        return value

    def mark(self, name: str, info: Any = None) -> None:
        atomic_write_json(self._path(name), info if info is not None else {})

    def clear(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)
