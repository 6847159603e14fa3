"""The Secrets Manager secret that holds the dataset source's credentials; its value is set out of band."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from cdk_app.constructs.nag import accept_checkov, acknowledge


class SourceSecret(Construct):
    """Created holding a placeholder with empty fields, so no credential ever appears in a template.

    The operator writes ``{"username": ..., "access_key": ...}`` or
    ``{"token": ...}`` with ``aws secretsmanager put-secret-value``; the
    download instance reads it at run time.  Until then the source answers
    401 and the instance says which secret to fill in.
    """

    def __init__(self, scope: Construct, id: str, *, secret_name: str) -> None:
        super().__init__(scope, id)
        self.secret = secretsmanager.Secret(
            self,
            "Secret",
            secret_name=secret_name,
            description='Dataset source credentials: {"username", "access_key"} or {"token"}; set by the operator',
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template='{"username": "", "access_key": ""}',
                generate_string_key="placeholder",
            ),
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        accept_checkov(self.secret, "CKV_AWS_149", "Encrypted with Secrets Manager's AWS-managed key; only the "
                       "download role may read it; a customer key would add a key policy to keep.")  # fmt: skip
        acknowledge(
            self.secret, "SMG4", "A dataset-site login is issued by a person on that site; no Lambda can rotate it."
        )
