"""Progress on a terminal (a throttled bar, log lines above it) and off one (plain lines with rate and ETA)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

from tests.fixtures.paths import ROOT

WORK = """
import logging, time
from bootstrap.cli import configure_logging
from bootstrap.common.progress import Progress
configure_logging(False)
progress = Progress("pack train", 3000, "images", log_every=0.2)
for i in range(3000):
    progress.advance()
    if i == 1500:
        logging.getLogger("bootstrap").info("a log line in the middle")
    time.sleep(0.0005)
progress.finish()
"""


def _run_on_a_terminal() -> str:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", WORK], stdin=follower, stdout=follower, stderr=follower, cwd=ROOT)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_the_bar_is_throttled_and_log_lines_print_above_it() -> None:
    screen = _run_on_a_terminal()
    frames = [f for f in screen.replace("\r\n", "\n").split("\r") if "pack train:" in f and "%|" in f]
    assert 1 <= len(frames) <= 60, len(frames)  # 3,000 updates, redrawn a few times a second, not per image
    lines = screen.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    logged = [line for line in lines if "a log line in the middle" in line]
    assert len(logged) == 1 and re.fullmatch(r"\d{4}-\d\d-\d\d [\d:,]+ INFO bootstrap: a log line in the middle",
                                             logged[0].strip("\x1b[K "))  # on a line of its own, not torn  # fmt: skip
    assert "pack train: 3,000 images / 3,000 images (100.0%) done in" in screen


def test_off_a_terminal_there_is_no_bar_only_lines_with_rate_and_eta() -> None:
    out = subprocess.run([sys.executable, "-c", WORK], capture_output=True, text=True, cwd=ROOT, check=True).stderr
    assert "\r" not in out and "%|" not in out
    progress = [line for line in out.splitlines() if "images/s, ETA" in line]
    assert progress and all(" INFO bootstrap.common.progress: pack train: " in line for line in progress)
