"""Copy the run's status file to an SSM parameter at a bounded rate, so an operator can watch from a laptop.

The engine rewrites ``status.json`` every couple of seconds; SSM PutParameter
is throttled per account, so a background thread publishes at most once per
``interval`` and only when the status changed, plus once more on stop so the
final state (done, or the last error) is always visible.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from bootstrap.common.periodic import Periodic
from bootstrap.common.state import read_state

log = logging.getLogger(__name__)


class StatusPublisher(Periodic):
    def __init__(self, status_path: Path, ssm: Any, parameter: str, interval: float = 30.0) -> None:
        super().__init__(interval, "status-publisher")
        self.status_path, self.ssm, self.parameter = status_path, ssm, parameter
        self._last: str | None = None

    def publish(self) -> bool:
        """Publish the current status if it changed; True when a PutParameter was made."""
        try:
            status = read_state(self.status_path)
        except (OSError, ValueError) as e:  # e.g. a file edited by hand; the next tick tries again
            log.warning("could not read the status file %s: %s", self.status_path, e)
            return False
        if not isinstance(status, dict):
            return False
        status.pop("updated_at", None)  # changes every write; not worth a PutParameter of its own
        value = json.dumps(status, sort_keys=True)
        if value == self._last:
            return False
        try:
            self.ssm.put_parameter(Name=self.parameter, Value=value, Type="String", Overwrite=True)
        except Exception as e:  # status is best effort: never stop the job for it
            log.warning("could not publish status to %s: %s", self.parameter, e)
            return False
        self._last = value
        log.debug("status copied to %s", self.parameter)
        return True

    def tick(self) -> None:
        self.publish()

    def stopped(self) -> None:
        self.publish()  # the final state (done, or the last error) is always visible
