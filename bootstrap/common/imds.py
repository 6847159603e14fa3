"""IMDSv2: a session token first, then the instance's identity. Never IMDSv1.

The endpoint is injectable (``AWS_EC2_METADATA_SERVICE_ENDPOINT``, as the AWS
SDKs name it) so tests and the demo can run a stub on 127.0.0.1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import urllib3

from bootstrap.common.errors import BootstrapError

DEFAULT_ENDPOINT = "http://169.254.169.254"
ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"


@dataclass(frozen=True)
class InstanceIdentity:
    instance_id: str
    region: str
    availability_zone: str


class Imds:
    def __init__(self, endpoint: str | None = None, *, timeout: float = 2.0, attempts: int = 5) -> None:
        self.endpoint = (endpoint or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")
        retries = urllib3.Retry(total=attempts, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504))
        self._pool = urllib3.PoolManager(timeout=timeout, retries=retries)
        self._token: str | None = None

    def _call(self, method: str, path: str, headers: dict[str, str]) -> str:
        try:
            resp = self._pool.request(method, self.endpoint + path, headers=headers)
        except urllib3.exceptions.HTTPError as e:
            raise BootstrapError(
                f"instance metadata at {self.endpoint} did not answer ({e}); is this an EC2 instance?"
            ) from None
        if resp.status != 200:
            raise BootstrapError(
                f"instance metadata {path}: HTTP {resp.status}; check that IMDS is enabled with hop limit >= 1"
            )
        return resp.data.decode()

    def token(self) -> str:
        if self._token is None:
            self._token = self._call("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
        return self._token

    def get(self, path: str) -> str:
        return self._call("GET", f"/latest/meta-data/{path}", {"X-aws-ec2-metadata-token": self.token()})

    def identity(self) -> InstanceIdentity:
        return InstanceIdentity(
            self.get("instance-id"), self.get("placement/region"), self.get("placement/availability-zone")
        )
