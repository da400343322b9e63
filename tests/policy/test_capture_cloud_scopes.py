"""The capture store's confinement on AWS and Azure, as designed (not deployed): each device may write under its own
prefix only. The documents are checked for shape and, by matching keys the way S3 matches resource ARNs, for escapes."""

from __future__ import annotations

import re

import pytest

from components.aws.capture import THING, device_capture_policy
from components.azure.capture import device_sas_scope
from policies.graph import Graph
from policies.hardening import check_iam
from policies.settings import Settings


def s3_allows(policy: dict, thing: str, key: str, bucket: str = "captures") -> bool:
    """S3 resource matching: `*` matches any characters (slashes too); the variable resolves to the caller's thing."""
    for st in policy["Statement"]:
        for resource in st["Resource"]:
            pattern = re.escape(resource.replace(THING, thing)).replace(r"\*", ".*")
            if st["Effect"] == "Allow" and re.fullmatch(pattern, f"arn:aws:s3:::{bucket}/{key}"):
                return True
    return False


def test_the_aws_policy_lets_a_device_put_only_under_its_own_prefix():
    policy = device_capture_policy("captures", "fleet", ["detector", "classifier"])
    [st] = policy["Statement"]
    assert st["Action"] == ["s3:PutObject"], "no read, list or delete"
    assert st["Resource"] == [
        "arn:aws:s3:::captures/fleet/classifier/${credentials-iot:ThingName}/*",
        "arn:aws:s3:::captures/fleet/detector/${credentials-iot:ThingName}/*",
    ]
    assert s3_allows(policy, "cam-1", "fleet/detector/cam-1/2026-01-01/1.npz")
    assert not s3_allows(policy, "cam-1", "fleet/detector/cam-2/2026-01-01/1.npz")


def test_a_device_cannot_nest_its_name_under_another_devices_prefix():
    """Attack: cam-1 writes fleet/detector/cam-2/cam-1/x, which a `*` before the thing name would match. Refused: no
    resource has a wildcard before the variable."""
    policy = device_capture_policy("captures", "fleet", ["detector"])
    assert not s3_allows(policy, "cam-1", "fleet/detector/cam-2/cam-1/x.npz")
    assert not s3_allows(policy, "cam-1", "models/detector/cam-1/x.npz"), "never the model store's keys"
    for st in policy["Statement"]:
        for resource in st["Resource"]:
            assert "*" not in resource.split(THING)[0]


@pytest.mark.parametrize("models", [["*"], ["a/b"], ["${aws:username}"], []])
def test_the_aws_policy_refuses_models_that_would_widen_it(models):
    with pytest.raises(ValueError):
        device_capture_policy("captures", "fleet", models)


def test_the_aws_policy_passes_the_iam_rule():
    def findings(policy: dict) -> list:
        graph = Graph([{"urn": "u", "type": "aws:iam/rolePolicy:RolePolicy", "name": "capture", "inputs": {"policy": policy}}])
        return list(check_iam(graph, Settings()))

    assert findings(device_capture_policy("captures", "", ["detector"])) == []
    wide = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": ["*"]}]}
    assert findings(wide), "the rule does read this record shape"


def test_the_azure_sas_scope_is_the_devices_directory_with_create_and_write_only():
    scope = device_sas_scope("captures", "detector", "cam-1", "2026-12-31T00:00:00Z")
    assert (scope["signedResource"], scope["directory"], scope["signedDirectoryDepth"]) == ("d", "detector/cam-1", 2)
    assert set(scope["permissions"]) <= set("cw"), "no read, list or delete"


@pytest.mark.parametrize("device_id", ["../cam-2", "cam-1/../cam-2", "..", ""])
def test_the_azure_scope_refuses_a_crafted_device_id(device_id):
    """Attack: a device id with path syntax, to be issued a SAS on another device's directory. Refused."""
    with pytest.raises(ValueError, match="plain path segment"):
        device_sas_scope("captures", "detector", device_id, "2026-12-31T00:00:00Z")
