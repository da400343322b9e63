"""The `edgefleet:aws` stack section: where the Greengrass fleet lives and how each ring's deployment rolls out."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from components.rollout.spec import Name, Strict

# Regions where Greengrass v2 is offered (AWS docs, "AWS IoT Greengrass endpoints and quotas").
AWS_REGIONS = (
    "us-east-1",
    "us-east-2",
    "us-west-2",
    "ca-central-1",
    "sa-east-1",
    "eu-west-1",
    "eu-west-2",
    "eu-central-1",
    "eu-north-1",
    "eu-south-1",
    "ap-south-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "me-central-1",
    "cn-north-1",
    "us-gov-west-1",
    "us-gov-east-1",
)


class AwsConfig(Strict):
    """AWS IoT Greengrass v2: where the fleet lives and how each ring's deployment (an IoT job) rolls out.

    Rings select devices by thing attributes (labels), so AWS cannot count a ring before devices register:
    `rings.<ring>.devices` says how many devices the ring should reach, and the gate never judges a ring
    on fewer. Unset job settings derive from the ring's gate (abort threshold from max_failure_share,
    in-progress timeout from deadline_seconds). Cross-field rules: components/aws/checks.py.
    """

    class RingPolicy(Strict):
        """One ring's IoT job: rollout rate, abort criteria and timeout, plus the devices it must reach."""

        devices: int = Field(ge=1, le=1_000_000)
        max_per_minute: int = Field(default=50, ge=1, le=1000)
        abort_failure_percent: Annotated[float, Field(gt=0, le=100)] | None = None  # IoT aborts at >= this share: 0 would abort at once
        abort_min_executed: int = Field(default=1, ge=1)
        timeout_minutes: Annotated[int, Field(ge=1, le=10080)] | None = None

    region: Literal[AWS_REGIONS]  # regions with Greengrass v2; anything else fails naming aws.region
    thing_type: Name | None = None  # default: edgefleet-<stack>-device
    metric_namespace: str = Field(default="Edgefleet/Agent", pattern=r"^[A-Za-z0-9._/#:-]{1,255}$")
    agent_version: str = Field(default="0.1.0", pattern=r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")  # the agent image tag
    deploying_role_arn: str | None = Field(default=None, pattern=r"^arn:aws(-cn|-us-gov)?:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$")
    rings: dict[Name, RingPolicy] = Field(default_factory=dict)
    manage_fleet_indexing: bool = True  # false when another stack owns this account's fleet-indexing settings
    poll_seconds: Annotated[float, Field(ge=1, le=300)] = 15

    @field_validator("metric_namespace")
    @classmethod
    def _not_aws_namespace(cls, value: str) -> str:
        if value.startswith("AWS/"):
            raise ValueError("namespaces starting with AWS/ are reserved for AWS services")
        return value
