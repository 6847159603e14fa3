"""Where the pipeline says something went wrong: one SNS topic, optionally with an email subscription.

Alarms in other stacks reach it by name, never by a CloudFormation export, so
the long-lived storage stack is never locked by the ephemeral download stack.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from cdk_app.constructs.nag import accept_checkov, acknowledge


def alerts_topic_name(pipeline: str) -> str:
    return f"{pipeline}-alerts"


class Alerts(Construct):
    def __init__(self, scope: Construct, id: str, *, pipeline: str, email: str | None) -> None:
        super().__init__(scope, id)
        self.topic = sns.Topic(self, "Topic", topic_name=alerts_topic_name(pipeline), enforce_ssl=True,
                               display_name=f"{pipeline} alerts")  # fmt: skip
        unencrypted = ("CloudWatch alarms cannot publish to a topic encrypted with the AWS-managed aws/sns key, and "
                       "the messages carry only alarm names and states.")  # fmt: skip
        acknowledge(self.topic, "SNS2", unencrypted)
        accept_checkov(self.topic, "CKV_AWS_26", unencrypted)
        if email:
            self.topic.add_subscription(subscriptions.EmailSubscription(email))


def alerts_topic(scope: Construct, pipeline: str) -> sns.ITopic:
    """The alerts topic from another stack, by its name (which the storage stack deploys first)."""
    stack = cdk.Stack.of(scope)
    arn = stack.format_arn(
        service="sns", resource=alerts_topic_name(pipeline), arn_format=cdk.ArnFormat.NO_RESOURCE_NAME
    )
    return sns.Topic.from_topic_arn(scope, "AlertsTopic", arn)


def notify(alarm: cloudwatch.Alarm, topic: sns.ITopic) -> None:
    """Send the alarm's state changes (into alarm, and back to OK) to the alerts topic."""
    action = cloudwatch_actions.SnsAction(topic)
    alarm.add_alarm_action(action)
    alarm.add_ok_action(action)
