"""How both command lines end on an error: one line that says what to do, and a documented exit code.

    0    done
    1    failed: an AWS call, a download, a check (run again to resume)
    2    bad command line or configuration, or a package the command needs is not installed
    3    storage: the data directory is full, read-only or not ours
    4    another run holds the data directory
    130  interrupted (Ctrl-C)

A traceback is printed only with ``--verbose``, and only for what is not a
person's mistake (a bug); a closed pipe (``| head``) ends quietly.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable

from bootstrap.common.errors import BootstrapError, ConfigError

INTERRUPTED = 130
EXTRAS = {"cv2": "download", "numpy": "download", "scipy": "download", "tqdm": "download", "aws_cdk": "operator",
          "constructs": "operator", "cdk_nag": "operator"}  # fmt: skip
"""The optional packages (pyproject's extras): a command that needs one says which extra installs it."""
REQUIREMENTS = {"download": "pip install -r bootstrap/requirements.txt", "operator": "pip install -r requirements.txt"}


def exit_code(e: BaseException, say: Callable[[str], None], *, verbose: bool) -> int:
    """Say ``e`` in one line with ``say`` and return the exit code for it."""
    from botocore.exceptions import BotoCoreError, ClientError

    from bootstrap.common.aws import aws_error

    if isinstance(e, BootstrapError):
        say(str(e))
        return e.exit_code
    if isinstance(e, ClientError | BotoCoreError):  # a missing resource, a denied call, no region or credentials
        say(str(aws_error(getattr(e, "operation_name", "AWS"), e)))
        return 1
    if isinstance(e, KeyboardInterrupt):
        say("interrupted; run the same command again to resume")
        return INTERRUPTED
    if isinstance(e, BrokenPipeError) or (isinstance(e, OSError) and e.errno == errno.EPIPE):
        return _pipe_closed()
    known = _environment_error(e)
    if known is not None:
        say(str(known))
        return known.exit_code
    if verbose:
        logging.getLogger("bootstrap").exception("unexpected error")
    else:
        say(f"unexpected error: {type(e).__name__}: {e} (a bug: run the same command with --verbose for the "
            "traceback, and report it)")  # fmt: skip
    return 1


def _environment_error(e: BaseException) -> BootstrapError | None:
    """A missing optional package, or a full, read-only or foreign filesystem outside any stage (the lock)."""
    from bootstrap.common.storage import storage_error

    if isinstance(e, ModuleNotFoundError) and e.name in EXTRAS:
        extra = EXTRAS[e.name]
        return ConfigError(f"{e.name} is not installed, and this command needs it: pip install "
                           f"'imagenet-staging[{extra}]' (in a checkout: {REQUIREMENTS[extra]})")  # fmt: skip
    return storage_error(e) if isinstance(e, OSError) else None


def _pipe_closed() -> int:
    """The reader of stdout went away (``| head``): stop without a traceback, as the Python docs advise."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1
