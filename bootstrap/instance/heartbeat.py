"""A CloudWatch heartbeat while the run lasts, so a run that never starts or dies silently raises an alarm.

The download stack's alarm treats a missing heartbeat as breaching: a user
data that failed (no unit ever ran), an instance that hangs, a unit that
gave up after its restart budget.  The run re-arms the alarm's actions when
it starts; the teardown function disarms them when the run is over, so the
silence after a finished run is no alert.
"""

from __future__ import annotations

import logging
from typing import Any

from bootstrap.common.periodic import Periodic
from bootstrap.contract.names import heartbeat_metric

log = logging.getLogger(__name__)


class Heartbeat(Periodic):
    def __init__(self, cloudwatch: Any, pipeline: str, alarm_name: str, interval: float = 60.0) -> None:
        super().__init__(interval, "heartbeat")
        self.cloudwatch, self.pipeline, self.alarm_name = cloudwatch, pipeline, alarm_name

    def started(self) -> None:
        try:
            self.cloudwatch.enable_alarm_actions(AlarmNames=[self.alarm_name])
        except Exception as e:  # best effort: the heartbeat itself matters more
            log.warning("could not re-arm the alarm %s: %s", self.alarm_name, e)
        self.tick()

    def tick(self) -> None:
        namespace, name, dimensions = heartbeat_metric(self.pipeline)
        try:
            self.cloudwatch.put_metric_data(Namespace=namespace, MetricData=[
                {"MetricName": name, "Value": 1, "Unit": "Count", "Dimensions": dimensions}])  # fmt: skip
        except Exception as e:
            log.warning("could not send the heartbeat: %s", e)
