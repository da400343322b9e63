"""What AWS computes at deploy time (ARNs, ids, generated names), as `edgefleet synth` shows it.

Deterministic: values derive from the resource's type, name and inputs, never from time or randomness, so
the same program synthesises the same graph. The account id is a placeholder; nothing here is real.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from components.aws.plan import partition

ACCOUNT = "123456789012"
DEPLOYER_ROLE = "edgefleet-deployer"
COMPUTED = "[computed at deploy]"
DYNAMIC = "pulumi-python:dynamic/edgefleet-aws:"
NAMESPACE = uuid.UUID("6f1d2a7e-5c1b-4e54-9d1e-2b7d0c9a6e11")


def _uid(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "/".join(parts)))


def _hex(n: int, *parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:n]


def _recipe(inputs: dict[str, Any]) -> dict[str, Any]:
    text = inputs.get("inlineRecipe")
    try:
        return json.loads(text) if isinstance(text, str) else {}
    except json.JSONDecodeError:
        return {}


def computed(type_: str, name: str, inputs: dict[str, Any], region: str) -> dict[str, Any] | None:
    p = partition(region)
    arn = f"arn:{p}:{{}}:{region}:{ACCOUNT}:{{}}".format
    if type_.startswith(DYNAMIC):
        kind = type_.removeprefix(DYNAMIC)
        return {
            "ModelArtifact": {"uri": f"s3://{inputs.get('bucket')}/{inputs.get('key')}", "version_id": COMPUTED},
            "ManifestSignature": {"signature": COMPUTED, "key_id": COMPUTED},
            "RingGate": {"gate": f"{inputs.get('rollout')}:{inputs.get('ring')}:{COMPUTED}", "measured": COMPUTED},
        }.get(kind)
    if type_ == "aws:kms/key:Key":
        key_id = _uid("kms", name)
        return {"keyId": key_id, "arn": arn("kms", f"key/{key_id}")}
    if type_ == "aws:kms/alias:Alias":
        return {"arn": arn("kms", inputs.get("name", f"alias/{name}")), "targetKeyArn": arn("kms", f"key/{inputs.get('targetKeyId')}")}
    if type_ == "aws:s3/bucket:Bucket":
        bucket = inputs.get("bucket") or f"{name}-{_hex(7, 'bucket', name)}"
        return {
            "bucket": bucket,
            "arn": f"arn:{p}:s3:::{bucket}",
            "bucketDomainName": f"{bucket}.s3.amazonaws.com",
            "bucketRegionalDomainName": f"{bucket}.s3.{region}.amazonaws.com",
            "region": region,
        }
    if type_ == "aws:s3/bucketObjectv2:BucketObjectv2":
        return {
            "versionId": _hex(32, "version", name),
            "etag": _hex(32, "etag", name),
            "arn": f"arn:{p}:s3:::{inputs.get('bucket')}/{inputs.get('key')}",
        }
    if type_ == "aws:ecr/repository:Repository":
        repo = inputs.get("name", name)
        return {
            "arn": arn("ecr", f"repository/{repo}"),
            "registryId": ACCOUNT,
            "repositoryUrl": f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{repo}",
        }
    if type_ == "aws:iam/role:Role":
        role = inputs.get("name", name)
        return {"arn": f"arn:{p}:iam::{ACCOUNT}:role/{role}", "name": role, "uniqueId": "AROA" + _hex(17, "role", name).upper()}
    if type_ == "aws:iot/roleAlias:RoleAlias":
        return {"arn": arn("iot", f"rolealias/{inputs.get('alias')}")}
    if type_ == "aws:iot/policy:Policy":
        return {"arn": arn("iot", f"policy/{inputs.get('name', name)}"), "defaultVersionId": "1"}
    if type_ == "aws:iot/thingType:ThingType":
        return {"arn": arn("iot", f"thingtype/{inputs.get('name', name)}")}
    if type_ == "aws-native:iot:ThingGroup":
        group = inputs.get("thingGroupName", name)
        return {"arn": arn("iot", f"thinggroup/{group}"), "awsId": _uid("thinggroup", group), "thingGroupName": group}
    if type_ == "aws-native:greengrassv2:ComponentVersion":
        recipe = _recipe(inputs)
        cname, cversion = recipe.get("ComponentName", COMPUTED), recipe.get("ComponentVersion", COMPUTED)
        return {"componentName": cname, "componentVersion": cversion, "arn": arn("greengrass", f"components:{cname}:versions:{cversion}")}
    if type_ == "aws-native:greengrassv2:Deployment":
        return {"deploymentId": _uid("deployment", name, json.dumps(inputs, sort_keys=True, default=str))}
    if type_ == "aws:cloudwatch/metricAlarm:MetricAlarm":
        return {"arn": arn("cloudwatch", f"alarm:{inputs.get('name', name)}")}
    return None


def call(token: str, args: dict[str, Any], region: str) -> dict[str, Any] | None:
    p = partition(region)
    if token == "aws:index/getCallerIdentity:getCallerIdentity":
        return {
            "accountId": ACCOUNT,
            "arn": f"arn:{p}:sts::{ACCOUNT}:assumed-role/{DEPLOYER_ROLE}/pulumi",
            "userId": "AROA" + _hex(17, "deployer").upper() + ":pulumi",
            "id": ACCOUNT,
        }
    if token == "aws:iam/getSessionContext:getSessionContext":
        role = str(args.get("arn", "")).split("/")[1] if "assumed-role/" in str(args.get("arn", "")) else DEPLOYER_ROLE
        return {
            "arn": args.get("arn"),
            "issuerArn": f"arn:{p}:iam::{ACCOUNT}:role/{role}",
            "issuerName": role,
            "issuerId": "AROA" + _hex(17, "deployer").upper(),
            "sessionName": "pulumi",
            "id": args.get("arn"),
        }
    if token == "aws:kms/getPublicKey:getPublicKey":
        key = args.get("keyId", "")
        return {
            "id": key,
            "keyId": key,
            "arn": key,
            "publicKeyPem": COMPUTED,
            "publicKey": COMPUTED,
            "keySpec": "ECC_NIST_P256",
            "keyUsage": "SIGN_VERIFY",
            "signingAlgorithms": ["ECDSA_SHA_256"],
            "customerMasterKeySpec": "ECC_NIST_P256",
            "encryptionAlgorithms": [],
        }
    return None
