"""The one place that makes boto3 clients: retries, endpoint overrides, error translation.

Every AWS call in ``bootstrap/`` and ``scripts/`` goes through ``client()`` so
that tests can point all of them at an emulator with ``AWS_ENDPOINT_URL`` and
so that throttling is retried the same way everywhere (adaptive mode).
"""

from __future__ import annotations

from typing import Any

from bootstrap.common.errors import BootstrapError, ConfigError


def client(service: str, *, region: str | None = None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "adaptive", "max_attempts": 10}, connect_timeout=10, read_timeout=60)
    return boto3.session.Session().client(service, region_name=region, config=config)


def secret_string(name: str, sm: Any = None) -> str:
    """The string value of a Secrets Manager secret, with errors a person can act on."""
    from botocore.exceptions import ClientError

    sm = sm or client("secretsmanager")
    try:
        return str(sm.get_secret_value(SecretId=name)["SecretString"])
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code == "ResourceNotFoundException":
            raise ConfigError(f"secret {name} does not exist: create it or fix the source secret name") from None
        if code in ("AccessDeniedException", "AccessDenied"):
            raise ConfigError(f"secret {name}: access denied; the role needs secretsmanager:GetSecretValue") from None
        raise BootstrapError(f"secret {name}: {code}") from None
    except KeyError:
        raise ConfigError(f"secret {name} has no string value; store the credentials as a JSON string") from None
