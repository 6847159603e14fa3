"""Create-attach-protect-remove for EBS volumes on this instance, waiting as AWS answers: eventually.

Shared by the GPU attach agent and the download instance's dataset-volume
publisher.  The order is the one that never leaks a volume:

- Describe right after CreateVolume may answer ``InvalidVolume.NotFound``
  (eventual consistency): that is "not yet", never "gone".
- AttachVolume returns while the attachment is still ``attaching``, and the
  device shows in DescribeInstances' block-device mappings later still;
  ModifyInstanceAttribute changes only mapped devices.  So: attach, wait for
  ``attached``, wait for the mapping, then set DeleteOnTermination (retried
  while EC2 says the device is not mapped), before anything else can fail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bootstrap.common.aws import error_code
from bootstrap.common.errors import BootstrapError

log = logging.getLogger(__name__)
DEVICE_NAMES = [f"/dev/sd{c}" for c in "fghijklmnop"]


class EbsError(BootstrapError):
    """A volume did not reach the state it must, in time, or has no device name to take."""


def free_device_name(mappings: list[dict[str, Any]]) -> str:
    used = {m["DeviceName"] for m in mappings}
    for name in DEVICE_NAMES:
        if name not in used and name.replace("/dev/sd", "/dev/xvd") not in used:
            return name
    raise EbsError("no free device name between /dev/sdf and /dev/sdp on this instance")


@dataclass
class Ebs:
    """EBS calls for the volumes of one instance; every wait polls until ``timeout_seconds``."""

    ec2: Any
    instance_id: str
    timeout_seconds: float = 300.0
    poll_seconds: float = 2.0
    sleep: Callable[[float], None] = time.sleep
    on_step: Callable[[str], None] = lambda _step: None
    """Told the name of each step as it starts, so a failure can say where it happened."""

    def wait(self, what: str, check: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise EbsError(f"timed out after {self.timeout_seconds:.0f}s waiting for {what}")
            self.sleep(self.poll_seconds)

    def volume(self, volume_id: str) -> dict[str, Any]:
        """The volume as EC2 describes it; ``{}`` while EC2 does not know it yet (right after CreateVolume)."""
        try:
            return dict(self.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0])
        except Exception as e:
            if error_code(e) == "InvalidVolume.NotFound":  # eventual consistency: "not yet", not "gone"
                return {}
            raise

    def attachment_state(self, volume_id: str) -> str:
        attachments = self.volume(volume_id).get("Attachments", [])
        ours = [a for a in attachments if a["InstanceId"] == self.instance_id]
        return str(ours[0]["State"]) if ours else ""

    def attached_device(self, volume_id: str) -> str | None:
        """The device name ``volume_id`` is attached to this instance as, if it is."""
        attachments = self.volume(volume_id).get("Attachments", [])
        return next((str(a["Device"]) for a in attachments if a["InstanceId"] == self.instance_id), None)

    def _mappings(self) -> list[dict[str, Any]]:
        instance = self.ec2.describe_instances(InstanceIds=[self.instance_id])
        return list(instance["Reservations"][0]["Instances"][0].get("BlockDeviceMappings", []))

    def _delete_on_termination(self, volume_id: str, device_name: str) -> bool:
        """Set the flag; False while EC2 still says the device is not mapped (retried until the timeout)."""
        try:
            self.ec2.modify_instance_attribute(InstanceId=self.instance_id, BlockDeviceMappings=[
                {"DeviceName": device_name, "Ebs": {"VolumeId": volume_id, "DeleteOnTermination": True}}])  # fmt: skip
        except Exception as e:
            if error_code(e) == "InvalidInstanceAttributeValue":
                return False
            raise
        return True

    def wait_available(self, volume_id: str) -> None:
        self.on_step("wait for the volume to be available")
        self.wait(f"{volume_id} to be available", lambda: self.volume(volume_id).get("State") == "available")

    def attach(self, volume_id: str) -> str:
        """Attach at a free device name and set DeleteOnTermination; returns the device name."""
        self.on_step("attach volume")
        device_name = free_device_name(self._mappings())
        self.ec2.attach_volume(VolumeId=volume_id, InstanceId=self.instance_id, Device=device_name)
        self.protect(volume_id, device_name)
        return device_name

    def protect(self, volume_id: str, device_name: str) -> None:
        """Wait for the attachment and its mapping, then set DeleteOnTermination (idempotent)."""
        self.on_step("wait for the attachment")
        self.wait(f"{volume_id} to be attached", lambda: self.attachment_state(volume_id) == "attached")
        self.wait(f"{device_name} in the block-device mappings",
                  lambda: any(m["DeviceName"] == device_name for m in self._mappings()))  # fmt: skip
        self.on_step("set DeleteOnTermination")
        self.wait("DeleteOnTermination to take", lambda: self._delete_on_termination(volume_id, device_name))

    def remove(self, volume_id: str) -> None:
        """Detach (if attached anywhere), wait until ``available``, delete."""
        attachments = self.volume(volume_id).get("Attachments", [])
        for attachment in attachments:
            self.ec2.detach_volume(VolumeId=volume_id, InstanceId=attachment["InstanceId"],
                                   Device=attachment["Device"], Force=True)  # fmt: skip
        if attachments:
            self.wait(f"{volume_id} to detach", lambda: self.volume(volume_id).get("State") == "available")
        self.ec2.delete_volume(VolumeId=volume_id)

    def remove_quietly(self, volume_id: str, why: str) -> None:
        """``remove``, best effort: logged, never masking the error that made it necessary."""
        try:
            self.remove(volume_id)
            log.info("deleted %s after %s", volume_id, why)
        except Exception as e:
            log.error("could not delete %s (%s); the janitor will remove it", volume_id, e)
