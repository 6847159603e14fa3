"""Running the system's commands (mkfs, mount, blkid, fsfreeze, shutdown) with errors a person can read."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from bootstrap.common.errors import BootstrapError

Runner = Callable[[list[str]], str]
"""Runs argv and returns its stdout; raises ``CommandError``. Injected so tests can record or refuse commands."""


class CommandError(BootstrapError):
    """A system command exited non-zero."""


def run_command(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as e:
        raise CommandError(f"{' '.join(argv)} failed: {e.stderr.strip() or e}") from None
