"""Policy documents for the AWS platform, as pure functions of ARNs (tests read them without Pulumi).

Least privilege by construction: every Allow names its actions one by one (no `*` or `service:*`), and
resources are the model prefix (the bucket itself for s3:GetBucketLocation only), the agent repository and the
keys. The only `*` resources are on actions AWS does not scope by resource (ecr:GetAuthorizationToken;
cloudwatch:PutMetricData, which is pinned to the agent's namespace by condition; the gate's CloudWatch reads and
Greengrass deployment reads; the Greengrass data-plane calls a core device makes).
"""

from __future__ import annotations

from typing import Any

from edgefleet_agent.contract.greengrass import STATUS_SHADOW_PREFIX

VERSION = "2012-10-17"

KEY_ADMIN = [
    "kms:DescribeKey",
    "kms:GetKeyPolicy",
    "kms:PutKeyPolicy",
    "kms:ListResourceTags",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateKeyDescription",
    "kms:EnableKey",
    "kms:DisableKey",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
    "kms:CreateAlias",
    "kms:UpdateAlias",
    "kms:DeleteAlias",
    "kms:GetKeyRotationStatus",
    "kms:EnableKeyRotation",
    "kms:DisableKeyRotation",
    "kms:ListAliases",
    "kms:CreateGrant",
    "kms:ListGrants",
    "kms:RevokeGrant",
    "kms:RetireGrant",
]


def _doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": VERSION, "Statement": list(statements)}


def account_root(partition: str, account: str) -> str:
    return f"arn:{partition}:iam::{account}:root"


def signing_key_policy(partition: str, account: str, deployer_role: str) -> dict[str, Any]:
    """Only the deploying role administers the key and signs with it; anyone in the account (through IAM)
    may read the public key. The account root gets no kms:Sign, so no IAM policy can grant signing."""
    return _doc(
        {"Sid": "DeployerAdministersKey", "Effect": "Allow", "Principal": {"AWS": deployer_role}, "Action": KEY_ADMIN, "Resource": "*"},
        {
            "Sid": "OnlyDeployerSigns",
            "Effect": "Allow",
            "Principal": {"AWS": deployer_role},
            "Action": ["kms:Sign", "kms:GetPublicKey"],
            "Resource": "*",
        },
        {
            "Sid": "AccountReadsPublicKey",
            "Effect": "Allow",
            "Principal": {"AWS": account_root(partition, account)},
            "Action": ["kms:GetPublicKey", "kms:DescribeKey"],
            "Resource": "*",
        },
    )


def storage_key_policy(partition: str, account: str, region: str, deployer_role: str) -> dict[str, Any]:
    """The model bucket's encryption key: the deployer writes and reads; other principals of the account may
    only decrypt, only through S3, and only when their IAM policy says so (the device role's does). Naming
    the device role here instead would make the key wait for the role and the role's policy for the key."""
    return _doc(
        {"Sid": "DeployerAdministersKey", "Effect": "Allow", "Principal": {"AWS": deployer_role}, "Action": KEY_ADMIN, "Resource": "*"},
        {
            "Sid": "DeployerUsesKey",
            "Effect": "Allow",
            "Principal": {"AWS": deployer_role},
            "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:GenerateDataKey"],
            "Resource": "*",
        },
        {
            "Sid": "AccountDecryptsThroughS3",
            "Effect": "Allow",
            "Principal": {"AWS": account_root(partition, account)},
            "Action": ["kms:Decrypt"],
            "Resource": "*",
            "Condition": {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}},
        },
    )


def bucket_policy(bucket_arn: str) -> dict[str, Any]:
    """Refuse every request that is not TLS, and every upload that asks for an encryption other than KMS
    (uploads that ask for none get the bucket's default, SSE-KMS with the stack's key)."""
    return _doc(
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn, f"{bucket_arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
        {
            "Sid": "DenyNonKmsEncryption",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": f"{bucket_arn}/*",
            "Condition": {
                "StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"},
                "Null": {"s3:x-amz-server-side-encryption": "false"},
            },
        },
    )


def device_role_trust() -> dict[str, Any]:
    """Greengrass core devices assume the role through the IoT credentials provider (the role alias)."""
    return _doc({"Effect": "Allow", "Principal": {"Service": "credentials.iot.amazonaws.com"}, "Action": "sts:AssumeRole"})


def device_role_policy(bucket_arn: str, storage_key_arn: str, region: str, repository_arn: str, metric_namespace: str) -> dict[str, Any]:
    """What a device may do with AWS credentials: read model artifacts, pull the agent image, publish health, and keep
    its own status shadows (`edgefleet-<model>`, contract/greengrass.py): the IoT credentials provider sets
    `credentials-iot:ThingName` to the thing whose certificate asked, so a device updates its own thing's shadows only."""
    arn_parts = repository_arn.split(":")
    partition_, account = arn_parts[1], arn_parts[4]
    # The nucleus's S3 downloader calls GetBucketLocation before each artifact download (else the deployment fails
    # with S3_GET_BUCKET_LOCATION_ACCESS_DENIED). AWS's token-exchange role policy grants it on "*" and its
    # component-artifact policy adds s3:GetObject on the bucket's objects: docs.aws.amazon.com/greengrass/v2/
    # developerguide/device-service-role.html (#device-service-role-permissions, #device-service-role-access-s3-bucket).
    return _doc(
        {"Sid": "LocateModelBucket", "Effect": "Allow", "Action": ["s3:GetBucketLocation"], "Resource": bucket_arn},
        {"Sid": "ReadModelArtifacts", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": f"{bucket_arn}/models/*"},
        {
            "Sid": "DecryptModelArtifacts",
            "Effect": "Allow",
            "Action": ["kms:Decrypt"],
            "Resource": storage_key_arn,
            "Condition": {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}},
        },
        {
            "Sid": "PullAgentImage",
            "Effect": "Allow",
            "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
            "Resource": repository_arn,
        },
        {"Sid": "EcrLogin", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": "*"},
        {
            "Sid": "PublishAgentHealth",
            "Effect": "Allow",
            "Action": ["cloudwatch:PutMetricData"],
            "Resource": "*",
            "Condition": {"StringEquals": {"cloudwatch:namespace": metric_namespace}},
        },
        {
            "Sid": "ReportStatusShadow",
            "Effect": "Allow",
            "Action": ["iot:UpdateThingShadow"],
            "Resource": f"arn:{partition_}:iot:{region}:{account}:thing/${{credentials-iot:ThingName}}/{STATUS_SHADOW_PREFIX}*",
        },
        {"Sid": "FindIotDataEndpoint", "Effect": "Allow", "Action": ["iot:DescribeEndpoint"], "Resource": "*"},  # takes no resource
    )


def status_read_policy(partition: str, region: str, account: str, bucket: str) -> dict[str, Any]:
    """What `edgefleet status --stack <aws stack>` calls (`components/aws/status.py`), read only: the rings' latest
    deployments, fleet indexing's count and buckets over the default thing index, the model bucket's rollout records,
    and the tagging look-up that finds that bucket (sts:GetCallerIdentity needs no permission)."""
    return _doc(
        {
            "Sid": "ReadRingDeployments",
            "Effect": "Allow",
            "Action": ["greengrass:ListDeployments", "greengrass:GetDeployment"],
            "Resource": "*",
        },
        {
            "Sid": "CountRingDevices",
            "Effect": "Allow",
            "Action": ["iot:GetStatistics", "iot:GetBucketsAggregation"],
            "Resource": f"arn:{partition}:iot:{region}:{account}:index/AWS_Things",
        },
        {"Sid": "FindModelBucket", "Effect": "Allow", "Action": ["tag:GetResources"], "Resource": "*"},
        {"Sid": "ListRolloutRecords", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:{partition}:s3:::{bucket}"},
        {
            "Sid": "ReadRolloutRecords",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": f"arn:{partition}:s3:::{bucket}/rollouts/*",
        },
    )


def gate_observation_policy(partition: str, region: str, account: str) -> dict[str, Any]:
    """What a ring gate reads to judge a ring (`components.aws.hub.AwsHub.observe`), for the deploying role, which
    Pulumi does not manage. CloudWatch's read actions take no resource or namespace condition (only PutMetricData
    has `cloudwatch:namespace`), so they are on `*`; IoT jobs are scoped to the account's jobs. ListMetrics finds
    the devices that filed per-device metrics when a metric gate fails; without it the gate still judges and rolls
    back, and names only devices it finds through the job's executions."""
    return _doc(
        {
            "Sid": "ReadRingDeployments",
            "Effect": "Allow",
            "Action": ["greengrass:ListDeployments", "greengrass:GetDeployment"],
            "Resource": "*",
        },
        {
            "Sid": "ReadRingJobs",
            "Effect": "Allow",
            "Action": ["iot:DescribeJob", "iot:ListJobExecutionsForJob"],
            "Resource": f"arn:{partition}:iot:{region}:{account}:job/*",
        },
        {"Sid": "ReadAgentHealth", "Effect": "Allow", "Action": ["cloudwatch:GetMetricData", "cloudwatch:ListMetrics"], "Resource": "*"},
    )


def core_device_iot_policy(partition: str, region: str, account: str, role_alias_arn: str) -> dict[str, Any]:
    """The IoT policy to attach to core devices' certificates at provisioning: their own MQTT topics, their
    Greengrass deployments, and credentials through the stack's role alias only."""
    base = f"arn:{partition}:iot:{region}:{account}"
    thing = "${iot:Connection.Thing.ThingName}"
    return _doc(
        {"Sid": "Connect", "Effect": "Allow", "Action": ["iot:Connect"], "Resource": f"{base}:client/{thing}*"},
        {
            "Sid": "OwnTopics",
            "Effect": "Allow",
            "Action": ["iot:Publish", "iot:Receive"],
            "Resource": f"{base}:topic/$aws/things/{thing}/*",
        },
        {"Sid": "OwnTopicFilters", "Effect": "Allow", "Action": ["iot:Subscribe"], "Resource": f"{base}:topicfilter/$aws/things/{thing}/*"},
        {
            "Sid": "OwnShadow",
            "Effect": "Allow",
            "Action": ["iot:GetThingShadow", "iot:UpdateThingShadow", "iot:DeleteThingShadow"],
            "Resource": f"{base}:thing/{thing}",
        },
        {"Sid": "Credentials", "Effect": "Allow", "Action": ["iot:AssumeRoleWithCertificate"], "Resource": role_alias_arn},
        {
            "Sid": "GreengrassDataPlane",
            "Effect": "Allow",
            "Action": [
                "greengrass:GetComponentVersionArtifact",
                "greengrass:ResolveComponentCandidates",
                "greengrass:GetDeploymentConfiguration",
                "greengrass:ListThingGroupsForCoreDevice",
            ],
            "Resource": "*",
        },
    )


def ecr_lifecycle_policy() -> dict[str, Any]:
    """Untagged layers go after a week; tagged agent versions are kept (rollbacks may need any of them) up to 200."""
    return {
        "rules": [
            {
                "rulePriority": 1,
                "description": "expire untagged images after 7 days",
                "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 7},
                "action": {"type": "expire"},
            },
            {
                "rulePriority": 2,
                "description": "keep the newest 200 agent images",
                "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 200},
                "action": {"type": "expire"},
            },
        ]
    }


def allow_actions(doc: dict[str, Any]) -> list[str]:
    """Every action an Allow statement grants (what the no-wildcard rule and tests inspect)."""
    out: list[str] = []
    for st in doc.get("Statement", []):
        if st.get("Effect") == "Allow":
            acts = st.get("Action", [])
            out += [acts] if isinstance(acts, str) else list(acts)
    return out


def wildcard_actions(doc: dict[str, Any]) -> list[str]:
    return [a for a in allow_actions(doc) if "*" in a]
