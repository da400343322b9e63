"""Which changed inputs make AWS replace a resource, for the AWS types edgefleet declares that do not say so
themselves: what `edgefleet plan` calls a replacement. edgefleet/plan/replace.py reads it through
components/registry.py and describes the shape. Pure data: no imports, no Pulumi.

Dynamic providers answer for themselves (their diff's DiffResult.replaces), and resources created with
`replace_on_changes` (pulumi-aws-native sets it on Greengrass types) carry it in their recorded options.
"""

REPLACE_ON: dict[str, tuple[str, ...]] = {
    "aws:s3/bucket:Bucket": ("bucket", "bucketPrefix", "objectLockEnabled"),
    "aws:s3/bucketV2:BucketV2": ("bucket", "bucketPrefix", "objectLockEnabled"),
    "aws:kms/key:Key": ("customerMasterKeySpec", "keyUsage", "customKeyStoreId", "multiRegion", "xksKeyId"),
    "aws:ecr/repository:Repository": ("name", "encryptionConfigurations"),
    "aws:iam/role:Role": ("name", "namePrefix", "path"),
    "aws:iam/policy:Policy": ("name", "namePrefix", "path", "description"),
    "aws:iam/rolePolicy:RolePolicy": ("name", "namePrefix", "role"),
    "aws:iot/thingGroup:ThingGroup": ("name",),
    "aws:iot/thingType:ThingType": ("name", "properties"),
    "aws:iot/policy:Policy": ("name",),
    "aws:iot/roleAlias:RoleAlias": ("alias",),
    "aws:s3/bucketObjectv2:BucketObjectv2": ("bucket", "key"),
    "aws:s3/bucketObject:BucketObject": ("bucket", "key"),
    "aws:cloudwatch/metricAlarm:MetricAlarm": ("name",),
}

# Every property of a Greengrass v2 deployment is create-only in CloudFormation (tags aside).
REPLACE_ALL_BUT: dict[str, tuple[str, ...]] = {"aws-native:greengrassv2:Deployment": ("tags",)}

IMMUTABLE_BY_NAME: tuple[dict, ...] = ()
