"""The one place that makes boto3 clients and turns AWS errors into one line a person can act on.

Every AWS call in ``bootstrap/`` and ``scripts/`` goes through ``client()`` so
that tests can point all of them at an emulator with ``AWS_ENDPOINT_URL`` and
so that throttling is retried the same way everywhere (adaptive mode).
``aws_error()`` is the one translator: a ``ClientError`` keeps AWS's code and
words, a ``BotoCoreError`` (no region, no credentials, no route to the
endpoint, a waiter that gave up) says what to fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from bootstrap.common.errors import BootstrapError, ConfigError


class AwsError(BootstrapError):
    """An AWS call failed; ``code`` is AWS's error code ("" when the SDK failed before AWS answered)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


_SDK_ADVICE = {
    "NoRegionError": "no AWS region: give --region (or 'region' in the config file), or set AWS_DEFAULT_REGION "
    "(aws configure)",
    "NoCredentialsError": "no AWS credentials: on an instance check its instance profile; elsewhere configure "
    "credentials (aws configure, AWS_PROFILE)",
    "EndpointConnectionError": "cannot reach the AWS endpoint: check the network route (public IP, NAT or VPC "
    "endpoints) and the region",
    "WaiterError": "gave up waiting; run the same command again to keep waiting",
}


def client(service: str, *, region: str | None = None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "adaptive", "max_attempts": 10}, connect_timeout=10, read_timeout=60)
    return boto3.session.Session().client(service, region_name=region, config=config)


def resolve_region(configured: str | None, from_instance: Callable[[], str]) -> str:
    """The region every client gets: the configured one, else the SDK's (AWS_DEFAULT_REGION, ~/.aws/config), else the
    instance's own from IMDS. boto3 never asks IMDS for the region itself (boto/boto3#375)."""
    if configured:
        return configured
    import boto3

    return boto3.session.Session().region_name or from_instance()


def error_code(e: BaseException) -> str:
    """AWS's error code of a ``ClientError``; "" for anything else."""
    response = getattr(e, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def aws_error(call: str, e: Exception, hints: Mapping[str, str] | None = None) -> AwsError:
    """``e`` from the AWS call ``call`` as one line; ``hints`` maps error codes to what to do about them."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(e, ClientError):
        code = error_code(e)
        message = e.response.get("Error", {}).get("Message", "")
        hint = (hints or {}).get(code)
        return AwsError(f"{call}: {code}: {message}" + (f"; {hint}" if hint else ""), code)
    if isinstance(e, BotoCoreError):
        advice = _SDK_ADVICE.get(type(e).__name__, "the AWS SDK failed before AWS answered")
        return AwsError(f"{call}: {e}; {advice}")
    return AwsError(f"{call}: {type(e).__name__}: {e}")


@contextmanager
def translated(call: str, hints: Mapping[str, str] | None = None) -> Iterator[None]:
    """Run AWS calls; an SDK or service error leaves as an ``AwsError`` naming ``call``."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError) as e:
        raise aws_error(call, e, hints) from None


def secret_string(name: str, sm: Any) -> str:
    """The string value of a Secrets Manager secret, with errors a person can act on."""
    try:
        with translated(f"secret {name}"):
            return str(sm.get_secret_value(SecretId=name)["SecretString"])
    except AwsError as e:
        if e.code == "ResourceNotFoundException":
            raise ConfigError(f"secret {name} does not exist: create it or fix the source secret name") from None
        if e.code in ("AccessDeniedException", "AccessDenied"):
            raise ConfigError(f"secret {name}: access denied; the role needs secretsmanager:GetSecretValue") from None
        raise
    except KeyError:
        raise ConfigError(f"secret {name} has no string value; store the credentials as a JSON string") from None
